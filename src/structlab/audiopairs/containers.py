"""What container a file really is, from its first bytes (magic numbers), not from its name or URL.

A freesound preview URL ends in ``.ogg`` or ``.mp3``, but a mirror, a proxy or a local server may answer
with other data (WAV, FLAC, an HTML error page); a file saved under the wrong extension misleads every
tool that trusts extensions. :func:`sniff` reads the signatures the formats' specifications define:

- Ogg: ``OggS`` capture pattern (RFC 3533); the first packet tells Vorbis (``\\x01vorbis``), Opus
  (``OpusHead``), FLAC-in-Ogg (``\\x7fFLAC``) and Speex apart;
- RIFF/WAVE (``RIFF....WAVE``), RF64 and Sony Wave64 (``RF64``/``BW64``, ``riff`` GUID);
- FLAC: ``fLaC``;
- MP3: an ``ID3`` tag, or an MPEG audio frame sync (11 set bits) with a valid layer and bit-rate index;
- AAC in ADTS (frame sync with layer 0), MP4/M4A (``ftyp`` box at offset 4);
- AIFF/AIFF-C (``FORM....AIFF`` / ``AIFC``), CAF (``caff``), Sun/NeXT ``.snd`` (``.snd``),
  WavPack (``wvpk``), Monkey's Audio (``MAC ``), Matroska/WebM (EBML ``\\x1a\\x45\\xdf\\xa3``).
"""

from __future__ import annotations

import os
from pathlib import Path

HEAD_BYTES = 64


def sniff_bytes(head: bytes) -> str | None:
    """The file extension (without the dot) for a file starting with ``head``, or None if unknown."""
    if head.startswith(b"OggS"):
        # The first page's first packet starts after the 27-byte header and the segment table.
        n_segments = head[26] if len(head) > 26 else 0
        packet = head[27 + n_segments :]
        if packet.startswith(b"OpusHead"):
            return "opus"
        if packet.startswith(b"\x7fFLAC"):
            return "oga"
        if packet.startswith(b"Speex"):
            return "spx"
        return "ogg"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] in (b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"riff" and head[16:24].startswith(b"wave"):
        return "w64"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[:4] == b"FORM" and head[8:12] == b"AIFF":
        return "aiff"
    if head[:4] == b"FORM" and head[8:12] == b"AIFC":
        return "aifc"
    if head.startswith(b"caff"):
        return "caf"
    if head.startswith(b".snd"):
        return "au"
    if head.startswith(b"wvpk"):
        return "wv"
    if head.startswith(b"MAC "):
        return "ape"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:HEAD_BYTES] else "mka"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 4 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer = (head[1] >> 1) & 0b11
        bitrate = head[2] >> 4
        rate = (head[2] >> 2) & 0b11
        if layer == 0 and head[1] & 0xF6 == 0xF0:  # ADTS: MPEG-2/4 AAC
            return "aac"
        if layer != 0 and bitrate not in (0, 15) and rate != 3 and (head[1] >> 3) & 0b11 != 1:
            return {1: "mp3", 2: "mp2", 3: "mp1"}[layer]
    return None


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The real container of the file at ``path`` as an extension ("ogg", "wav", "flac", "mp3", ...).

    None when the first bytes match no audio container (an HTML error page, a truncated file).
    Raises ``FileNotFoundError`` for a missing file.
    """
    with open(Path(path), "rb") as handle:
        return sniff_bytes(handle.read(HEAD_BYTES))
