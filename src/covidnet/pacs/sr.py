"""The result as a DICOM Comprehensive SR (highdicom), stored into the analysed study.

The content tree under the container "COVIDNet CT analysis" (local codes, scheme
``99COVIDNET``, except where DICOM or SNOMED has one):

* ``Analysis status``: analysed, or not analysed with ``Reason not analysed`` (a study that
  cannot be analysed gets an SR that says why, never silence);
* ``Algorithm Name`` / ``Algorithm Version`` (DCM 111001 / 111003): the model's name and
  registry version; ``Series Instance UID`` (DCM 112002): the analysed series;
* ``COVID-19 probability`` and ``Model score`` (UCUM ``1``), ``Decision threshold``,
  ``Decision`` (SNOMED 840539006 COVID-19 or 233604007 Pneumonia, i.e. another pneumonia);
* ``Abnormal lung fraction``, ``Ground-glass opacity fraction``, ``Consolidation fraction``
  (UCUM ``%``), ``Quality control flags``, ``Series selection``;
* ``Overlay image``: the Secondary Capture (:mod:`covidnet.pacs.capture`);
* ``Disclaimer``: not for diagnosis (and SYNTHETIC training data when the model says so).

A re-analysis of a study whose content changed names the report(s) it supersedes in
``PredecessorDocumentsSequence``; :func:`covidnet.pacs.dicomweb.current_reports` picks the
current one. :func:`report_values` reads the tree back.
"""

from __future__ import annotations

from typing import Any

from covidnet.pacs.capture import DISCLAIMER

SCHEME = "99COVIDNET"
#: name -> (code value, scheme, meaning) of each concept.
CONCEPTS: dict[str, tuple[str, str, str]] = {
    "title": ("CNA-0", SCHEME, "COVIDNet CT analysis"),
    "status": ("CNA-1", SCHEME, "Analysis status"),
    "algorithm": ("111001", "DCM", "Algorithm Name"),
    "version": ("111003", "DCM", "Algorithm Version"),
    "series": ("112002", "DCM", "Series Instance UID"),
    "probability": ("CNA-2", SCHEME, "COVID-19 probability"),
    "score": ("CNA-3", SCHEME, "Model score"),
    "threshold": ("CNA-4", SCHEME, "Decision threshold"),
    "decision": ("CNA-5", SCHEME, "Decision"),
    "abnormal": ("CNA-6", SCHEME, "Abnormal lung fraction"),
    "ggo": ("CNA-7", SCHEME, "Ground-glass opacity fraction"),
    "consolidation": ("CNA-8", SCHEME, "Consolidation fraction"),
    "qc": ("CNA-9", SCHEME, "Quality control flags"),
    "selection": ("CNA-10", SCHEME, "Series selection"),
    "reason": ("CNA-11", SCHEME, "Reason not analysed"),
    "disclaimer": ("CNA-12", SCHEME, "Disclaimer"),
    "overlay": ("CNA-13", SCHEME, "Overlay image"),
}
STATUS = {"analysed": ("CNA-20", SCHEME, "Analysed"), "not_analysed": ("CNA-21", SCHEME, "Not analysed")}
DECISIONS = {"covid19": ("840539006", "SCT", "COVID-19"), "other_pneumonia": ("233604007", "SCT", "Pneumonia")}
_UNITS = {"1": ("1", "UCUM", "no units"), "%": ("%", "UCUM", "percent")}


def _code(spec: tuple[str, str, str]):
    import highdicom as hd

    return hd.sr.CodedConcept(*spec)


def qc_text(answer: dict) -> str:
    """The QC flags in words: the fields outside the training range, ``none``, or why it was not checked."""
    check = answer.get("qc_check") or {}
    if check.get("all_in_range") is None:
        return "not checked (no training reference)"
    return ", ".join(check.get("out_of_range") or []) or "none"


def build_report(ref, answer: dict | None, reason: str | None, uids: dict[str, str], series_number: int,
                 manufacturer: str, overlay=None, previous=()):
    """The Comprehensive SR of one study.

    Args:
        ref: a header of the study (of the analysed series when there is one); patient and study
            attributes come from it.
        answer: the endpoint's per-study answer (:func:`covidnet.serve.answer.answer`); None
            when the study could not be analysed.
        reason: why not (stored verbatim in the SR: it may name series of this study).
        uids: ``sr_series`` and ``sr_sop`` (derived UIDs).
        series_number, manufacturer: ``pacs.sr_series_number``, ``pacs.manufacturer``.
        overlay: the Secondary Capture dataset, referenced as ``Overlay image``.
        previous: earlier reports of this study that this one supersedes.
    """
    import highdicom as hd

    def text(name, value):
        return hd.sr.TextContentItem(name=_code(CONCEPTS[name]), value=str(value), relationship_type="CONTAINS")

    def num(name, value, unit="1"):
        return hd.sr.NumContentItem(name=_code(CONCEPTS[name]), value=float(value), unit=_code(_UNITS[unit]),
                                    relationship_type="CONTAINS")

    status = "analysed" if answer is not None else "not_analysed"
    items = [hd.sr.CodeContentItem(name=_code(CONCEPTS["status"]), value=_code(STATUS[status]),
                                   relationship_type="CONTAINS")]
    synthetic = False
    if answer is None:
        items.append(text("reason", reason or "unknown"))
    else:
        model = answer.get("model") or {}
        synthetic = str(model.get("synthetic")).lower() == "true"
        items += [text("algorithm", model.get("name")), text("version", model.get("version"))]
        if answer.get("series_uid"):
            items.append(hd.sr.UIDRefContentItem(name=_code(CONCEPTS["series"]), value=answer["series_uid"],
                                                 relationship_type="CONTAINS"))
        items += [num("probability", answer["covid19_probability"]), num("score", answer["score"]),
                  num("threshold", answer["threshold"]),
                  hd.sr.CodeContentItem(name=_code(CONCEPTS["decision"]), value=_code(DECISIONS[answer["decision"]]),
                                        relationship_type="CONTAINS")]
        lesions = answer.get("lesions") or {}
        for name, field in (("abnormal", "abnormal_fraction"), ("ggo", "ggo_fraction"),
                            ("consolidation", "consolidation_fraction")):
            if lesions.get(field) is not None:
                items.append(num(name, 100.0 * lesions[field], "%"))
        items += [text("qc", qc_text(answer)), text("selection", answer.get("selection") or "")]
        if overlay is not None:
            items.append(hd.sr.ImageContentItem(name=_code(CONCEPTS["overlay"]),
                                                referenced_sop_class_uid=overlay.SOPClassUID,
                                                referenced_sop_instance_uid=overlay.SOPInstanceUID,
                                                relationship_type="CONTAINS"))
    items.append(text("disclaimer", f"{DISCLAIMER}: research software; a radiologist reads every study."
                      + (" The model was trained on SYNTHETIC data." if synthetic else "")))
    root = hd.sr.ContainerContentItem(name=_code(CONCEPTS["title"]))
    root.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=[ref] + ([overlay] if overlay is not None else []), content=root,
        series_instance_uid=uids["sr_series"], series_number=series_number, sop_instance_uid=uids["sr_sop"],
        instance_number=1, manufacturer=manufacturer, is_complete=True, is_final=False, is_verified=False,
        previous_versions=list(previous) or None)
    sr.SeriesDescription = f"COVIDNet result - {DISCLAIMER}"
    return sr


def _concept(item) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def report_values(ds) -> dict[str, Any]:
    """The values of an SR built by :func:`build_report`, by concept name (see :data:`CONCEPTS`).

    Numbers come from ``FloatingPointValue`` when present (full precision), else the decimal
    string; codes as their meaning; the overlay as its SOP Instance UID.
    """
    names = {spec[2]: name for name, spec in CONCEPTS.items()}
    out: dict[str, Any] = {}
    for item in ds.ContentSequence:
        name = names.get(_concept(item), _concept(item))
        kind = str(item.ValueType)
        if kind == "NUM":
            mv = item.MeasuredValueSequence[0]
            out[name] = float(mv.FloatingPointValue) if "FloatingPointValue" in mv else float(mv.NumericValue)
        elif kind == "CODE":
            out[name] = str(item.ConceptCodeSequence[0].CodeMeaning)
        elif kind == "UIDREF":
            out[name] = str(item.UID)
        elif kind == "IMAGE":
            out[name] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif kind == "TEXT":
            out[name] = str(item.TextValue)
    return out


def reference_header(path):
    """The header of one file (no pixels), with the patient and study attributes highdicom needs
    (type 2: present, maybe empty) filled in empty where the file lacks them."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds
