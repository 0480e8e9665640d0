"""The TID 1500 Measurement Report (Comprehensive 3D SR) for one classified film, built with highdicom.

Content tree (see ``docs/dicom_results.md``)::

    Imaging Measurement Report (TID 1500)
    ├─ Language, Observer = device cxrtool (model id), Procedure reported = Plain chest X-ray
    ├─ Image Library: the source film
    └─ Imaging Measurements
       └─ Measurement Group (TID 1501): tracking id, Algorithm Identification (TID 4019),
          source image, Finding = predicted class, Input check (when the model flags inputs),
          Probability of <class> (one per class, UCUM 1), Out-of-distribution score (when present)
"""

from __future__ import annotations

import re

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from cxrtool.results import codes as cx
from cxrtool.results.content import FilmPrediction, ModelInfo
from cxrtool.results.layout import MANUFACTURER, ResultIds, stable_uid
from cxrtool.results.study import study_reference


def build_sr(source: Dataset, prediction: FilmPrediction, model: ModelInfo, ids: ResultIds) -> Comprehensive3DSR:
    """Source film header + prediction -> SR dataset in the source's study (nothing is written)."""
    ref = study_reference(source)
    device = DeviceObserverIdentifyingAttributes(
        uid=stable_uid("device", model.model_id),
        name=model.name,
        manufacturer_name=MANUFACTURER,
        model_name=model.model_id[:64],
    )
    context = ObservationContext(
        observer_device_context=ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )
    algorithm = AlgorithmIdentification(name=model.name, version=model.version, parameters=model.parameters)

    evaluations = [
        QualitativeEvaluation(cx.FINDING, cx.class_concept(label, prediction.class_names.index(label)))
        for label in _labels(prediction.predicted)
        if label in prediction.class_names
    ]
    if prediction.flag is not None:
        evaluations.append(QualitativeEvaluation(cx.INPUT_CHECK, cx.flag_concept(prediction.flag)))
    measurements = [
        Measurement(name=cx.probability_concept(name, i), value=float(p), unit=cx.UNIT_ONE)
        for i, (name, p) in enumerate(zip(prediction.class_names, prediction.probs))
    ]
    if prediction.ood_score is not None:
        measurements.append(Measurement(name=cx.OOD_SCORE, value=float(prediction.ood_score), unit=cx.UNIT_ONE))

    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=stable_uid("tracking", ids.sop_uid), identifier="cxrtool classification"
        ),
        algorithm_id=algorithm,
        source_images=[_source_image(ref)],
        qualitative_evaluations=evaluations or None,
        measurements=measurements,
    )
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=cx.PLAIN_CHEST_XRAY,
        imaging_measurements=[group],
        referenced_images=[_library_view(ref)],
    )
    return Comprehensive3DSR(
        evidence=[ref],
        content=report[0],
        series_instance_uid=ids.series_uid,
        series_number=ids.series_number,
        sop_instance_uid=ids.sop_uid,
        instance_number=ids.instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        series_description=ids.series_description,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=[CodingSchemeIdentificationItem(designator=cx.SCHEME, name=cx.SCHEME_NAME)],
        is_complete=True,
        specific_character_set=ref.get("SpecificCharacterSet"),
    )


def _source_image(ref: Dataset) -> SourceImageForMeasurementGroup:
    """The measurement group's reference to the film, by its UIDs alone.

    ``SourceImageForMeasurementGroup.from_source_image`` reads the source's *Modality* only to refuse
    SR/SEG/PR sources; a film's Modality is often missing, lower-case (``dx``) or too long (all dropped
    by :func:`~cxrtool.results.study.study_reference`), and the SR's own Modality is always ``SR``.
    The film decoded as an image, so it is one.
    """
    return SourceImageForMeasurementGroup(
        referenced_sop_class_uid=ref.SOPClassUID, referenced_sop_instance_uid=ref.SOPInstanceUID
    )


def _library_view(ref: Dataset) -> Dataset:
    """What the Image Library entry (TID 1601) describes: SOP class/instance, rows, columns.

    highdicom adds the projection-radiography descriptors (TID 1603) when *Modality* is CR/DX and
    then reads Patient Orientation and Imager Pixel Spacing unconditionally, while the standard makes
    them conditional; many real films lack them (and a mislabelled "CT" film would be asked for CT
    geometry).  So *Modality* is shown only when those descriptors can be written from real values.
    """
    view = Dataset()
    view.Modality = ""  # read by highdicom only to choose descriptors; never written to the SR
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in ref:
            setattr(view, keyword, ref.get(keyword))
    orientation, spacing = ref.get("PatientOrientation"), ref.get("ImagerPixelSpacing")
    if ref.get("Modality") in _PROJECTION and orientation and len(orientation) == 2 and spacing and len(spacing) == 2:
        view.Modality = ref.Modality
        view.PatientOrientation = orientation
        view.ImagerPixelSpacing = spacing
    return view


_PROJECTION = frozenset({"CR", "DX", "RG"})


def _labels(predicted: str) -> list[str]:
    return [label for label in re.split(r"[;|]", predicted) if label]
