"""The Ray Serve application: `serve run serve.config` deploys artifacts/best.pth (see serve/app.py)."""
