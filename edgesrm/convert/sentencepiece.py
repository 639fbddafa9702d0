"""Just enough of a protobuf decoder to read a SentencePiece ``tokenizer.model``.

Installing the ``sentencepiece`` wheel (and ``protobuf``) only to list a model's pieces would
be a heavy dependency on a Pi; the file is a small protobuf ``ModelProto`` whose few fields
we need are documented in sentencepiece_model.proto:

    ModelProto      1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
    SentencePiece   1: piece (string)   2: score (float)   3: type (enum, default NORMAL=1)
    TrainerSpec     3: model_type (UNIGRAM=1, BPE=2, WORD=3, CHAR=4)   35: byte_fallback
    NormalizerSpec  3: add_dummy_prefix (default true)   4: remove_extra_whitespaces (default true)

Piece types use the same numbers as GGUF token types (NORMAL 1, UNKNOWN 2, CONTROL 3,
USER_DEFINED 4, UNUSED 5, BYTE 6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgesrmError

MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass
class SentencePieceModel:
    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    model_type: str = "unigram"
    byte_fallback: bool = False
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


class _Corrupt(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) for one message; value is int or memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise _Corrupt("field runs past the end")
        yield number, wire, value


def read_model(path: Path) -> SentencePieceModel:
    """Parse ``tokenizer.model``; a damaged file is one ``EdgesrmError``."""
    try:
        data = memoryview(path.read_bytes())
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror}") from None
    model = SentencePieceModel()
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                piece, score, kind = None, 0.0, 1
                for n, w, v in _fields(value):
                    if n == 1 and w == 2:
                        piece = bytes(v).decode("utf-8")
                    elif n == 2 and w == 5:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3 and w == 0:
                        kind = v
                if piece is None:
                    raise _Corrupt("a piece has no text")
                model.pieces.append(piece)
                model.scores.append(score)
                model.types.append(kind)
            elif number == 2 and wire == 2:
                for n, w, v in _fields(value):
                    if n == 3 and w == 0:
                        model.model_type = MODEL_TYPES.get(v, f"type {v}")
                    elif n == 35 and w == 0:
                        model.byte_fallback = bool(v)
            elif number == 3 and wire == 2:
                for n, w, v in _fields(value):
                    if n == 3 and w == 0:
                        model.add_dummy_prefix = bool(v)
                    elif n == 4 and w == 0:
                        model.remove_extra_whitespaces = bool(v)
    except (_Corrupt, UnicodeDecodeError, struct.error) as exc:
        raise EdgesrmError(f"{path} is not a valid SentencePiece model ({exc})") from None
    if not model.pieces:
        raise EdgesrmError(f"{path} is not a valid SentencePiece model (it has no pieces)")
    return model
