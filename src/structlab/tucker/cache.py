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
        for name, t in new.items():
            buf = self._storage.get(name)
            if (t.shape[1], t.shape[3]) != self.shapes[name] or (buf is not None and t.shape[0] != buf.shape[0]):
                raise ValueError(
                    f"cache: {name!r} holds (batch, heads, seq, dim) = "
                    f"({buf.shape[0] if buf is not None else 'any'}, {self.shapes[name][0]}, seq, "
                    f"{self.shapes[name][1]}); got {tuple(t.shape)} (a cache belongs to one layer and batch)"
                )
            if buf is not None and (t.dtype != buf.dtype or t.device != buf.device):
                raise ValueError(
                    f"cache: {name!r} holds {buf.dtype} on {buf.device}; got {t.dtype} on {t.device}"
                )
        end = self._length + seq
        for name, t in new.items():
            buf = self._storage.get(name)
            if buf is None or buf.shape[2] < end:
                capacity = max(end, 2 * (buf.shape[2] if buf is not None else 0), 16)
                grown = t.new_empty(t.shape[0], t.shape[1], capacity, t.shape[3])
                if buf is not None:
                    grown[:, :, : self._length] = buf[:, :, : self._length]
                self._storage[name] = buf = grown
            buf[:, :, self._length : end] = t
        self._length = end
        return self.tensors

    def reset(self) -> None:
        """Forget every cached position (keeps nothing allocated)."""
        self._storage.clear()
        self._length = 0

    def __repr__(self) -> str:
        return f"KVCache(shapes={self.shapes}, length={self._length}, nbytes={self.nbytes})"

