"""The heatmap Secondary Capture: the film with explain's LRP heatmap blended in, plus burnt-in text.

The picture is the film at its own aspect ratio (long side 512-1024 px) with the relevance map put
back onto the film's geometry (undoing the model's stretch / letterbox / centre crop), coloured
and blended exactly as ``explain``'s overlay does (:func:`cxrtool.explain.render.overlay`).  A black
band below it carries the predicted class and probability, the model id, the heatmap's target
and composite, any input-check flag and "NOT FOR DIAGNOSTIC USE".  No patient data is drawn.
"""

from __future__ import annotations

import numpy as np
from highdicom import ContentQualificationValues
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cxrtool.results.content import FilmPrediction, Heatmap, ModelInfo
from cxrtool.results.layout import MANUFACTURER, ResultIds
from cxrtool.results.study import study_reference

DISPLAY_MIN, DISPLAY_MAX = 512, 1024
WARNING = "NOT FOR DIAGNOSTIC USE"
_ORIENTATION = frozenset("APRLHF")


def relevance_on_film(relevance: np.ndarray, film_shape: tuple[int, int], resize: str) -> np.ndarray:
    """Map a model-input relevance map (S x S) onto a film of ``film_shape`` (the inverse of the resize)."""
    size = relevance.shape[0]
    h, w = film_shape
    if resize == "letterbox":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        region = relevance[top : top + nh, left : left + nw]
    elif resize == "center_crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        region = np.zeros((nh, nw), dtype=np.float32)
        top, left = (nh - size) // 2, (nw - size) // 2
        region[top : top + size, left : left + size] = relevance
    else:  # stretch
        region = relevance
    pil = Image.fromarray(np.ascontiguousarray(region, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def display_shape(film_shape: tuple[int, int]) -> tuple[int, int]:
    """The picture's film area: the film's aspect, long side clamped to [DISPLAY_MIN, DISPLAY_MAX]."""
    h, w = film_shape
    side = min(max(h, w, DISPLAY_MIN), DISPLAY_MAX)
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def caption_lines(prediction: FilmPrediction, model: ModelInfo, heatmap: Heatmap) -> list[str]:
    """The burnt-in text, one string per line."""
    name, prob = prediction.top
    label = prediction.predicted or "(no class above threshold)"
    lines = [
        f"cxrtool: {label}  (p {name} = {prob:.3f})",
        f"model {model.model_id}  |  heatmap: {heatmap.composite}, target {heatmap.target}",
    ]
    if prediction.flag and prediction.flag != "ok":
        lines.append(f"INPUT CHECK: {prediction.flag}")
    lines.append(WARNING)
    return lines


def render_picture(prediction: FilmPrediction, model: ModelInfo, heatmap: Heatmap) -> np.ndarray:
    """Film + blended heatmap + text band -> H x W x 3 uint8 (RGB)."""
    from cxrtool.explain import render

    h, w = display_shape(heatmap.film.shape)
    film = np.asarray(
        Image.fromarray(heatmap.film.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    )
    film = np.clip(film, 0.0, 1.0)
    scale = render.symmetric_scale(heatmap.relevance)
    picture = render.overlay(film, relevance_on_film(heatmap.relevance, (h, w), heatmap.resize), scale)

    lines = caption_lines(prediction, model, heatmap)
    font_size = max(12, w // 40)
    font = ImageFont.load_default(size=font_size)
    line_h = int(font_size * 1.35)
    canvas = Image.new("RGB", (w, h + line_h * len(lines) + font_size // 2), "black")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        colour = "yellow" if text == WARNING or text.startswith("INPUT CHECK") else "white"
        draw.text((font_size // 2, h + font_size // 4 + i * line_h), text, fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def build_sc(source: Dataset, picture: np.ndarray, ids: ResultIds) -> SCImage:
    """Source film header + rendered picture -> Secondary Capture dataset in the source's study."""
    ref = study_reference(source)
    orientation = _orientation(ref)
    laterality = ref.get("Laterality") if ref.get("Laterality") in ("R", "L") else None
    sc = SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.ascontiguousarray(picture, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=ids.series_uid,
        series_number=ids.series_number,
        sop_instance_uid=ids.sop_uid,
        instance_number=ids.instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),
        laterality=laterality,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=ids.series_description,
        content_qualification=ContentQualificationValues.RESEARCH,
    )
    if orientation is None:
        sc.PatientOrientation = ""  # Type 2: unknown when the source does not say (never guessed)
    if laterality is None:
        sc.Laterality = ""  # Type 2C, same rule
    sc.copy_patient_and_study_information(ref)
    sc.BurnedInAnnotation = "YES"
    return sc


def _orientation(ref: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is two valid biped values (the picture keeps the film's orientation)."""
    value = ref.get("PatientOrientation")
    if value is None or len(value) != 2:  # type: ignore[arg-type]
        return None
    row, col = (str(v) for v in value)  # type: ignore[union-attr]
    if row and col and set(row + col) <= _ORIENTATION:
        return row, col
    return None
