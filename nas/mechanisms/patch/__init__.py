"""The patch tokenizer (ViT / DeiT): non-overlapping ``patch_size`` patches, a Linear embedding (a conv), cls token,
learned absolute positions. The model is ``nas.mechanisms.patch.model.PatchTokens``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nas.errors import NasError
from nas.mechanisms import Fail, Tokenizer, default, register
from nas.space.schema import Reader, integer, options


@dataclass(frozen=True)
class PatchTokenizer:
    """ViT/DeiT patch embedding: non-overlapping ``patch_size`` patches, cls token, learned positions."""
    patch_size: int = 16
    type: str = field(default="patch", init=False)


def patch_embed_cost(img_size: int, patch: int, in_chans: int, dim: int) -> tuple[int, int]:
    """(MACs, params) of the patch-embedding conv (with bias) on an ``img_size`` image."""
    side, conv = img_size // patch, patch * patch * in_chans * dim
    return side * side * conv, conv + dim


class Patch(Tokenizer):
    name, config, model, grid = "patch", PatchTokenizer, "nas.mechanisms.patch.model", True

    def read(self, r: Reader, choosable: Callable) -> dict[str, Any]:
        r.allow("type", "patch_size")
        return {"type": self.name, "patch_size": r.take("patch_size", choosable(integer(1)),
                                                        default(PatchTokenizer, "patch_size"))}

    def check_space(self, t: dict[str, Any], fail: Fail) -> None:
        size = t["input"]["size"]
        for p in options(t["tokenizer"]["patch_size"]):
            if size % p:
                fail("tokenizer.patch_size", f"input size {size} is not divisible by patch_size {p}")

    def check(self, arch: Any) -> None:
        p = arch.tokenizer.patch_size
        if p < 1 or arch.img_size % p:
            raise NasError(f"input size {arch.img_size} is not a multiple of patch_size {p}",
                           key="tokenizer.patch_size")

    def weights(self, tok: PatchTokenizer) -> str:
        return f"patch{tok.patch_size}"  # a patch size is its own embedding and position table, not a slice

    def side(self, img_size: int, tok: PatchTokenizer) -> int:
        return img_size // tok.patch_size

    def cost(self, img_size: int, in_chans: int, tok: PatchTokenizer, st: Any, qkv_bias: bool,
             cls: bool) -> tuple[tuple[int, ...], int]:
        """The conv, the cls token and the position table (which covers the cls position too)."""
        macs, params = patch_embed_cost(img_size, tok.patch_size, in_chans, st.dim)
        n = self.side(img_size, tok) ** 2 + cls
        return (macs,), params + cls * st.dim + n * st.dim


register(Patch())
