"""Content credentials: what a C2PA manifest embedded in an image or video says about where it came from.

A camera, an editor or a generator that signs its output embeds a manifest (C2PA, read here with
c2pa-python): who made the claim, its actions and whether the signature and the hashes of the media still
hold. An answer reports it beside the model's verdict, never blended into the fake probability: a valid
manifest that declares a generative-AI source is the maker's own word, a missing one says nothing (most
platforms strip manifests on upload).

    credentials = read_credentials(upload_bytes, "image/jpeg")
    credentials["present"], credentials["valid"], credentials["generative_ai"]
"""

from __future__ import annotations

import io
import json
import mimetypes
from pathlib import Path
from typing import Any

# IPTC digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/) that say a generative model
# made the media or part of it.
GENERATIVE_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia",
                                     "algorithmicMedia"})
_VALID_STATES = ("Valid", "Trusted")


def absent(note: str | None = None) -> dict[str, Any]:
    """The answer for media without a readable manifest; `note` says why when it is not simply missing."""
    return {"present": False, "valid": None, "validation_state": None, "claim_generator": None,
            "generative_ai": None, "digital_source_types": [], "validation_failures": [], "note": note}


def read_credentials(data: bytes, mime_type: str) -> dict[str, Any]:
    """The C2PA manifest of media given as bytes and its MIME type (`image/jpeg`, `video/mp4`, ...): present,
    valid, validation_state, claim_generator, generative_ai, digital_source_types, validation_failures, note.
    A file without one, of a type C2PA does not cover, or corrupt, answers `present: False` with a note."""
    import c2pa

    mime_type = (mime_type or "").split(";")[0].strip().lower()
    if mime_type not in c2pa.Reader.get_supported_mime_types():
        return absent(f"{mime_type or 'this type'} is not a format that carries C2PA content credentials")
    try:
        reader = c2pa.Reader.try_create(mime_type, io.BytesIO(data))
        if reader is None:
            return absent()
        with reader:
            store = json.loads(reader.json())
    except Exception as err:  # noqa: BLE001 - corrupt media or manifest, or the reader's own fault: a note
        return absent(f"the content credentials could not be read ({err})")
    return summarise(store)


def read_credentials_path(path: str | Path) -> dict[str, Any]:
    """`read_credentials` of a file, its MIME type guessed from its extension."""
    path = Path(path)
    mime_type, _ = mimetypes.guess_type(path.name)
    return read_credentials(path.read_bytes(), mime_type or "")


def summarise(store: dict[str, Any]) -> dict[str, Any]:
    """The answer's fields from a manifest store as c2pa-python's `Reader.json()` gives it."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "", {})
    sources = sorted({action["digitalSourceType"].rstrip("/").rsplit("/", 1)[-1]
                      for manifest in manifests.values() for assertion in manifest.get("assertions", [])
                      if assertion.get("label", "").startswith("c2pa.actions")
                      for action in (assertion.get("data") or {}).get("actions", [])
                      if isinstance(action.get("digitalSourceType"), str)})
    state = store.get("validation_state")
    failures = ((store.get("validation_results") or {}).get("activeManifest") or {}).get("failure")
    if failures is None:  # older stores list problems in validation_status only
        failures = store.get("validation_status") or []
    return {
        "present": True,
        "valid": state in _VALID_STATES,
        "validation_state": state,
        "claim_generator": _claim_generator(active),
        "generative_ai": bool(GENERATIVE_SOURCE_TYPES.intersection(sources)),
        "digital_source_types": sources,
        "validation_failures": sorted({failure["code"] for failure in failures if "code" in failure}),
        "note": None,
    }


def describe_credentials(credentials: dict[str, Any]) -> str:
    """One line for a person: who signed it, whether it holds, whether it declares generative AI."""
    if not credentials["present"]:
        return "no content credentials" + (f" ({credentials['note']})" if credentials["note"] else "")
    state = "valid" if credentials["valid"] else "INVALID"
    ai = "declares a generative-AI source" if credentials["generative_ai"] else "declares no generative-AI source"
    failures = [code for code in credentials["validation_failures"] if code != "signingCredential.untrusted"]
    return (f"content credentials by {credentials['claim_generator'] or 'an unnamed tool'}: {state} "
            f"({credentials['validation_state']}{'; ' + ', '.join(failures) if failures else ''}), {ai}")


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    # C2PA 2 claims name their generator in claim_generator_info; version 1 claims in a claim_generator string.
    info = manifest.get("claim_generator_info") or []
    names = [" ".join(str(part) for part in (item.get("name"), item.get("version")) if part) for item in info]
    return ", ".join(name for name in names if name) or manifest.get("claim_generator")
