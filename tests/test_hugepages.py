"""CPU tensors in transparent huge pages: where they apply, the memory is really huge-paged and the
model computes exactly as before; where they do not, the reason is recorded."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from elmbench.backends import ModelSpec, create_backend
from elmbench.config import get_config
from elmbench.engine import hugepages
from elmbench.measure.membw import measure_read_bandwidth
from elmbench.models.openelm_torch import OpenELM

needs_thp = pytest.mark.skipif(
    hugepages.unavailable() is not None, reason=f"no huge pages here: {hugepages.unavailable()}"
)


@needs_thp
def test_huge_empty_is_aligned_and_backed_by_huge_pages() -> None:
    before = hugepages.process_huge_mib() or 0.0
    t = hugepages.huge_empty((16 * 2**20 // 4,), torch.float32).fill_(1.0)  # 16 MiB
    assert t.data_ptr() % hugepages.HUGE_PAGE == 0
    assert t.shape == (16 * 2**20 // 4,) and float(t.sum()) == t.numel()
    after = hugepages.process_huge_mib()
    assert after is not None and after - before >= 8  # most of it; the kernel may refuse some
    view = hugepages.huge_empty((1024, 2048), torch.bfloat16)
    assert view.shape == (1024, 2048) and view.dtype == torch.bfloat16


def test_small_tensors_and_the_off_switch_give_plain_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = hugepages.huge_empty((100,), torch.float32)
    assert small.shape == (100,)  # under a huge page: plain memory
    monkeypatch.setenv("ELMBENCH_HUGEPAGES", "off")
    assert hugepages.unavailable() == "turned off by ELMBENCH_HUGEPAGES"
    assert hugepages.move_parameters(nn.Linear(2048, 2048)) == {
        "used": False,
        "reason": "turned off by ELMBENCH_HUGEPAGES",
    }
    result = measure_read_bandwidth(size_mib=4, repeats=1, backend="torch", threads=1)
    assert not result.huge_pages and "huge pages" not in result.method


@needs_thp
def test_moved_parameters_keep_identity_values_and_tied_weights() -> None:
    torch.manual_seed(0)
    # a 16384 x 64 embedding (4 MiB) is moved; the small layers stay where they are
    model = OpenELM(replace(get_config("tiny"), vocab_size=16384)).eval()
    emb = model.transformer.token_embeddings.weight
    small = model.transformer.layers[0].attn.qkv_proj.weight
    small_ptr = small.data_ptr()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokens = torch.randint(0, 16384, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(tokens)
    facts = hugepages.move_parameters(model)
    assert facts["used"] and facts["parameters_mib"] == 4.0
    assert model.transformer.token_embeddings.weight is emb  # same Parameter, new memory
    assert emb.data_ptr() % hugepages.HUGE_PAGE == 0
    assert small.data_ptr() != small_ptr
    # under 2 MiB: copied into ordinary memory (off any file mapping), not into huge pages
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    with torch.inference_mode():
        assert torch.equal(model(tokens), ref)  # the tied head reads the moved embedding


@needs_thp
def test_cpu_backend_moves_the_weights_and_decodes_the_same_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = ModelSpec(model="tiny", seed=5, kernels="elmbench")
    prompt = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(2)).numpy()
    moved = create_backend("torch", spec)
    facts = moved.describe()["engine"]["huge_pages"]
    assert facts["used"] and facts["process_huge_mib"] is not None
    monkeypatch.setenv("ELMBENCH_HUGEPAGES", "off")
    plain = create_backend("torch", spec)
    assert plain.describe()["engine"]["huge_pages"]["used"] is False
    for backend in (moved, plain):
        backend.setup(1, 16)
    assert (moved.generate(prompt, 5) == plain.generate(prompt, 5)).all()


@needs_thp
def test_probe_buffers_are_in_huge_pages_and_say_so() -> None:
    result = measure_read_bandwidth(size_mib=8, repeats=1, backend="torch", threads=1)
    assert result.huge_pages and "in huge pages" in result.method
    assert result.to_record()["membw_huge_pages"] is True


@needs_thp
def test_a_second_model_in_a_process_is_resident_once() -> None:
    """The originals are handed back to the OS after the move (glibc would keep them)."""
    import gc
    import re

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]

    cfg = replace(get_config("tiny"), vocab_size=65536)  # a 16 MiB embedding
    sizes = []
    for _ in range(3):
        model = OpenELM(cfg)
        hugepages.move_parameters(model)
        sizes.append(rss_mib())
        del model
        gc.collect()
    assert sizes[2] - sizes[1] < 8 and sizes[1] - sizes[0] < 8, sizes
