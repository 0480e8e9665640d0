"""Synthetic ChestX-ray14 Data_Entry rows in the two published header variants."""

from __future__ import annotations

V2020_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
V2017_HEADER = V2020_HEADER + ","


def nih_row(image: str, labels: str, follow: int, pid: int, view: str = "PA", age: str = "50") -> str:
    return f"{image},{labels},{follow},{pid},{age},M,{view},2500,2048,0.143,0.143"
