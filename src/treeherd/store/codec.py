"""How stored records are encoded: MessagePack of the tagged object structs (one decoder for every kind)."""

from __future__ import annotations

import msgspec

from treeherd.model.objects import AnyObject

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyObject)


def encode(obj: AnyObject) -> bytes:
    """The stored bytes of an object."""
    return _encoder.encode(obj)


def decode(data: bytes) -> AnyObject:
    """The object stored as `data`."""
    obj: AnyObject = _decoder.decode(data)
    return obj
