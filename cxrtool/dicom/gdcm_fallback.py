"""GDCM as the last decoding plugin for 12-bit JPEG Extended, which pydicom will not hand to GDCM.

pydicom 3's own GDCM plugin refuses *JPEG Extended* with more than 8 bits stored, and pylibjpeg
fails on files with a misplaced SOS marker (pydicom's ``JPEG-lossy.dcm``) that DCMTK's IJG code
and python-gdcm 3.2 decode (python-gdcm retries with its 12-bit IJG build; the result matches
``dcmj2pnm`` within one level).  This module is a pydicom decoder plugin (the three objects of
pydicom's *Pixel Data Decoder Plugins* guide); :func:`register_fallback` appends it after
pydicom's plugins, so it only runs when they all fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom import uid

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

PLUGIN = "cxrtool-gdcm"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm>=3.0.10",)}


def is_available(tsyntax: str) -> bool:
    """True for the transfer syntaxes above when python-gdcm imports."""
    if tsyntax not in DECODER_DEPENDENCIES:
        return False
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One encoded frame -> its decoded bytes (little endian, Bits Allocated wide), through GDCM."""
    import gdcm

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetValue(fragments.__ref__())

    img = gdcm.Image()
    img.SetNumberOfDimensions(2)
    img.SetDimensions((runner.columns, runner.rows, 1))
    img.SetDataElement(elem)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    img.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    if runner.samples_per_pixel > 1:
        img.SetPlanarConfiguration(runner.planar_configuration)
    img.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(runner.transfer_syntax))))
    bits = runner.bits_stored
    img.SetPixelFormat(
        gdcm.PixelFormat(runner.samples_per_pixel, runner.bits_allocated, bits, bits - 1, runner.pixel_representation)
    )
    frame = img.GetBuffer()  # GDCM returns char* as str: re-encode it to the raw bytes
    data = frame.encode("utf-8", "surrogateescape")
    expected = runner.rows * runner.columns * runner.samples_per_pixel * (runner.bits_allocated // 8)
    if len(data) != expected:
        raise RuntimeError(f"GDCM decoded {len(data)} bytes, expected {expected}")
    return data


_registered = False


def register_fallback() -> None:
    """Add the plugin to pydicom's decoders once per process (after pydicom's own plugins)."""
    global _registered
    if _registered:
        return
    from pydicom.pixels import get_decoder

    for tsyntax in DECODER_DEPENDENCIES:
        decoder = get_decoder(tsyntax)
        if PLUGIN not in decoder.available_plugins and PLUGIN not in getattr(decoder, "_unavailable", {}):
            decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
    _registered = True
