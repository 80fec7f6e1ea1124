"""The key-value cache of incremental decoding.

Each attention layer caches what its keys and values are computed from, and nothing more: MHA and GQA
their keys and values (``k``, ``v``: 2 N n_KV d_H numbers), MLA its KV latent (``c_kv``: N d_c),
Tucker Attention its key and value latents (``k``, ``v``: N (r3 + v3); ``kv`` alone, N r3, when keys and
values share one latent). Tensors are stored as (batch, heads, seq, dim) with ``heads`` = 1 for the
latent layers, the layout ``F.scaled_dot_product_attention`` reads.

Appending copies only the new rows: storage grows by doubling, so decoding N tokens costs O(N) copies
in total instead of the O(N^2) of concatenating at every step.
"""

from __future__ import annotations

from torch import Tensor


class KVCache:
    """Cached tensors of one attention layer, appended in place by the layer's ``forward``.

    Create it with the layer's ``new_cache()``; pass the same object to every ``forward`` call of a
    decoding run. ``length`` is the number of cached positions (the position of the next token, which
    RoPE uses); ``tensors`` maps each name to the filled part, shape (batch, heads, length, dim);
    ``nbytes`` is the memory those filled parts take. Appending writes in place, so decode under
    ``torch.no_grad()`` or ``torch.inference_mode()``: no gradient flows through a cache across calls.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        self.shapes = dict(shapes)  # name -> (heads, dim) of each cached tensor
        self.names = tuple(shapes)
        self._storage: dict[str, Tensor] = {}
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {name: buf[:, :, : self._length] for name, buf in self._storage.items()}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def append(self, **new: Tensor) -> dict[str, Tensor]:
        """Append ``new[name]`` (batch, heads, seq, dim) for every cached name; return the whole cache.

        Raises ``ValueError`` when the names, batch size, heads, dims, dtype or device differ from
        what the cache already holds (e.g. a cache made by another layer).
        """
        if set(new) != set(self.names):
            raise ValueError(f"cache: got tensors {sorted(new)}; this cache holds {sorted(self.names)}")
        seqs = {t.shape[2] for t in new.values()}
        if len(seqs) != 1:
            raise ValueError(f"cache: new tensors have different lengths {sorted(seqs)}")
        (seq,) = seqs
        batch = next(iter(new.values())).shape[0]
        for name, t in new.items():
            if (t.shape[1], t.shape[3]) != self.shapes[name] or t.shape[0] != batch:
                raise ValueError(
                    f"cache: {name!r} holds (batch, heads, seq, dim) = (batch, {self.shapes[name][0]}, seq, "
                    f"{self.shapes[name][1]}); got {tuple(t.shape)} (a cache belongs to one layer and batch)"
                )
        start = self._length
        filled = dict(zip(self.names, self.extend(batch, seq, new[self.names[0]]), strict=True))
        for name, t in new.items():
            filled[name][:, :, start:] = t
        return filled

    def extend(self, batch: int, seq: int, like: Tensor) -> tuple[Tensor, ...]:
        """Count ``seq`` more positions as cached and return, per name in ``names`` order, the filled part
        (batch, heads, length, dim) whose last ``seq`` positions the caller writes in place.

        This is how a layer's decoding step computes its new keys straight into the cache (no copy);
        until it writes them, those positions hold garbage. ``like`` gives the dtype and device. Storage
        grows by doubling. Raises ``ValueError`` for another batch size, dtype or device than the cache
        holds (a cache belongs to one layer and batch).
        """
        end = self._length + seq
        filled = []
        for name in self.names:
            buf = self._storage.get(name)
            if buf is not None and (buf.shape[0] != batch or buf.dtype != like.dtype or buf.device != like.device):
                raise ValueError(
                    f"cache: {name!r} holds batch {buf.shape[0]} of {buf.dtype} on {buf.device}; got batch {batch} "
                    f"of {like.dtype} on {like.device} (a cache belongs to one layer and batch)"
                )
            if buf is None or buf.shape[2] < end:
                heads, dim = self.shapes[name]
                capacity = max(end, 2 * (buf.shape[2] if buf is not None else 0), 16)
                grown = like.new_empty(batch, heads, capacity, dim)
                if buf is not None:
                    grown[:, :, : self._length] = buf[:, :, : self._length]
                self._storage[name] = buf = grown
            filled.append(buf[:, :, :end])
        self._length = end
        return tuple(filled)

    def truncate(self, length: int) -> None:
        """Forget the positions from ``length`` on (keeps the storage): the next token sits at ``length``.

        Raises ``ValueError`` for a length outside 0 .. ``self.length``.
        """
        if not isinstance(length, int) or not 0 <= length <= self._length:
            raise ValueError(f"length={length!r}: expected an int in 0 .. {self._length} (the cached positions)")
        self._length = length

    def reset(self) -> None:
        """Forget every cached position (keeps nothing allocated)."""
        self._storage.clear()
        self._length = 0

    def __repr__(self) -> str:
        return f"KVCache(shapes={self.shapes}, length={self._length}, nbytes={self.nbytes})"

