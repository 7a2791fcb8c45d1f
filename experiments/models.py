"""Manage the registered detector's versions: which one answers (champion), which one is on trial (challenger).

    python experiments/models.py list                 # versions, roles, AUCs, runs
    python experiments/models.py challenge 4          # on trial (shadow or canary), within seconds on a server
    python experiments/models.py promote 4            # version 4 answers
    python experiments/models.py rollback             # the previous champion answers again

`python experiments/models.py --help` says more; the code is deepfake_platform/orchestration/registry_cli.py.
"""

if __name__ == "models":
    # A recipe beside this file imported the project's `models` package (the detectors), and found this file:
    # Python puts a script's own folder first on its import path. Hand over the real package, which the import
    # system returns in this module's place, and define nothing else here.
    import importlib.util
    import sys
    from pathlib import Path

    _package = Path(__file__).resolve().parents[1] / "models" / "__init__.py"
    _spec = importlib.util.spec_from_file_location("models", _package,
                                                   submodule_search_locations=[str(_package.parent)])
    sys.modules["models"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["models"])
elif __name__ == "__main__":
    from deepfake_platform.orchestration.registry_cli import run

    run()
