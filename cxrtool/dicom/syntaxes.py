"""Transfer syntaxes cxrtool expects to decode (reported by ``cxrtool doctor``) and decoder preferences."""

TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)

# Lossy JPEG decoders differ in their inverse DCT by one grey level on a few % of pixels.
# Pillow (libjpeg-turbo, accurate integer IDCT) decodes our JPEG baseline fixtures bit-identically
# to DCMTK's IJG code and about twice as fast as pylibjpeg, so it is tried first; pydicom's own
# plugin order is the fallback (e.g. 12-bit JPEG extended, which Pillow cannot decode).
PREFERRED_PLUGINS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pillow",
    "1.2.840.10008.1.2.4.51": "pillow",
}
