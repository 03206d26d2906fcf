"""Shared helpers of the DICOMweb tests: querying Orthanc through DICOMweb, counting what it stores."""

from __future__ import annotations

import json
import urllib.request


def qido(dicomweb: str, path: str) -> list[dict]:
    """A QIDO-RS query (``path`` such as ``series?Modality=SEG``) as parsed JSON."""
    with urllib.request.urlopen(f"{dicomweb}/{path}", timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else []


def uid(entry: dict, tag: str = "0020000E") -> str:
    """A UID attribute (default: SeriesInstanceUID) of a DICOM JSON entry."""
    return entry[tag]["Value"][0]


def orthanc_instances(url: str) -> set[str]:
    """Every instance Orthanc stores (its REST API, not DICOMweb): to show nothing was deleted or replaced."""
    with urllib.request.urlopen(f"{url}/instances", timeout=30) as response:
        return set(json.loads(response.read()))
