"""scan(method="fast") and scan(estimator=...): the fast mode's rows against the exact mode's
"mp-moments" rows (float64 truth), the estimator plumbing, and their bad-input errors.

Matrices: Gaussian noise of a known scale plus a few spikes well above the Marchenko-Pastur edge
(the fast mode's model), fresh every run."""

from __future__ import annotations

import math

import pytest
import torch

import spectrum_fast
from spectrum_fast.errors import SelectionError
from spectrum_fast.ops import fast_snr, noise_edge
from spectrum_fast.ops.stats import threshold_factor


def spiked(n: int, m: int, spikes: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    noise = torch.randn(n, m, generator=gen, dtype=torch.float64) / math.sqrt(max(n, m))
    k = min(n, m)
    u = torch.linalg.qr(torch.randn(n, spikes, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(m, spikes, generator=gen, dtype=torch.float64))[0]
    edge = threshold_factor(n, m)  # the noise's edge in these units (sigma = 1)
    s = edge * (3.0 + 4.0 * torch.rand(spikes, generator=gen, dtype=torch.float64))
    assert k > spikes
    return (noise + (u * s) @ v.T).to(dtype)


def model(gen: torch.Generator) -> dict[str, torch.Tensor]:
    weights = {}
    for layer in range(4):
        weights[f"model.layers.{layer}.mlp.up_proj.weight"] = spiked(384, 160, 3 + layer, gen)
        weights[f"model.layers.{layer}.mlp.down_proj.weight"] = spiked(160, 384, 2 + layer, gen)
        weights[f"model.layers.{layer}.self_attn.q_proj.weight"] = spiked(48, 48, 2, gen)  # k <= 64: all values
    return weights


def test_fast_rows_match_the_exact_mp_moments_rows(seed):
    gen = torch.Generator().manual_seed(seed)
    weights = model(gen)
    exact = spectrum_fast.scan(weights, device="cpu", progress=False, estimator="mp-moments")
    fast = spectrum_fast.scan(weights, device="cpu", progress=False, method="fast")
    assert fast.method == "fast" and fast.estimator == "mp-moments" and exact.estimator == "mp-moments"
    assert [r.name for r in fast.rows] == [r.name for r in exact.rows]
    for e, f in zip(exact.rows, fast.rows):
        assert f.estimate and not e.estimate
        # The spikes are found, so sigma and the edge are the exact mode's (to the subspace
        # iteration's accuracy on the spikes' squares), the count above the edge is exact (inertia)
        # and so the signal is the exact mode's to the found values' accuracy; the noise sum is the
        # MP law's expectation, a little off the bulk's actual sum.
        assert f.sigma == pytest.approx(e.sigma, rel=1e-4), (seed, e.name)
        assert f.n_signal == e.n_signal, (seed, e.name)
        assert f.snr == pytest.approx(e.snr, rel=0.02), (seed, e.name, f.snr, e.snr)
        if min(f.shape) <= fast_snr.FULL_SPECTRUM_MAX_K:
            assert f.snr == pytest.approx(e.snr, rel=1e-10), (seed, e.name)


def widths_asked(monkeypatch) -> list[int]:
    """The numbers of values the fast mode asks fast_snr.top_eigenvalues for, call by call."""
    calls = []
    real = fast_snr.top_eigenvalues
    monkeypatch.setattr(fast_snr, "top_eigenvalues", lambda g, t, seed=None: calls.append(t) or real(g, t, seed))
    return calls


@pytest.mark.parametrize("fraction", [1.0, 0.1], ids=["doubling", "full-spectrum"])
def test_fast_mode_finds_more_values_when_all_found_are_spikes(monkeypatch, fraction, seed):
    """16 values first, then 32, then 64 for 40 spikes; or, where that passes FULL_SPECTRUM_FRACTION
    of k, every value from the Gram."""
    monkeypatch.setattr(fast_snr, "START_VALUES", 16)
    monkeypatch.setattr(fast_snr, "FULL_SPECTRUM_FRACTION", fraction)
    calls = widths_asked(monkeypatch)
    gen = torch.Generator().manual_seed(seed)
    w = spiked(300, 700, 40, gen)
    table = fast_snr.fast_snr_statistics(w.unsqueeze(0))
    assert calls == ([16, 32, 64] if fraction == 1.0 else [16]), (seed, calls)
    s = torch.linalg.svdvals(w.double())
    truth = noise_edge.deflated_moments(*noise_edge.spectrum_moments(s.flip(-1).unsqueeze(0)), 300, 700)
    assert int(truth.n_spikes) == 40, seed
    assert int(table[0, 5]) == 40, seed
    assert table[0, 1].item() == pytest.approx(truth.sigma.item(), rel=1e-4), seed


def test_past_max_values_the_count_stays_exact_and_the_rest_is_estimated(monkeypatch, seed):
    """40 spikes, at most 32 values: the first round (16 values) already counts 40 above the edge,
    more than MAX_VALUES, so no further round runs; the count still comes from the inertia (40),
    the signal from the 16 found plus an estimate of the other 24, each between the edge and the
    smallest found value."""
    monkeypatch.setattr(fast_snr, "START_VALUES", 16)
    monkeypatch.setattr(fast_snr, "MAX_VALUES", 32)
    calls = widths_asked(monkeypatch)
    gen = torch.Generator().manual_seed(seed)
    w = spiked(300, 700, 40, gen)
    table = fast_snr.fast_snr_statistics(w.unsqueeze(0))
    assert calls == [16], (seed, calls)
    s = torch.linalg.svdvals(w.double())
    tau = table[0, 2]
    assert int(table[0, 5]) == int((s > tau).sum()) == 40, seed
    found = s[:16].sum()  # the fast mode's 16 are these to the iteration's accuracy (1e-4 allowed)
    assert (found + 24 * tau) * (1 - 1e-4) <= table[0, 3] <= (found + 24 * s[15]) * (1 + 1e-4), seed


def test_a_found_value_just_under_the_spike_edge_is_settled_by_an_exact_count(seed):
    """A Gram with 3 large spikes and a fourth value 0.3% above sigma's spike edge (so that the
    fixed point deflates 4), found 0.5% low, as a subspace iteration that has not converged there
    leaves it: deflated_moments then stops at 3 spikes, and _settle_spike_count restores 4 from the
    exact count of the Gram's eigenvalues above the edge."""
    gen = torch.Generator().manual_seed(seed)
    k, big = 300, 700
    beta = k / big
    factor = noise_edge.spike_edge_factor(k, big)
    bulk = (0.05 + 1.95 * torch.rand(k - 4, generator=gen, dtype=torch.float64)).sort(descending=True).values
    # v above the edge of sigma(3) (v itself in the bulk's energy): v = c (B + v).
    c = (1.003 * factor) ** 2 / (k - 3 * (1 + beta))
    v = c * bulk.sum() / (1 - c)
    eigenvalues = torch.cat([torch.tensor([100.0, 80.0, 60.0], dtype=torch.float64), v.reshape(1), bulk])
    g = torch.diag(eigenvalues).unsqueeze(0)
    frob2 = eigenvalues.sum().reshape(1)
    true_s = eigenvalues[:32].sqrt().unsqueeze(0)
    assert int(fast_snr._spikes(frob2, true_s, k, big).n_spikes) == 4, seed
    low = true_s.clone()
    low[0, 3] *= 0.995
    found = fast_snr._spikes(frob2, low, k, big)
    assert int(found.n_spikes) == 3, seed
    settled = fast_snr._settle_spike_count(g, frob2, low, found, k, big)
    expected = noise_edge.deflated_sigma(frob2, low, torch.tensor([4]), k, big)
    assert settled.item() == pytest.approx(expected.item(), rel=1e-15), seed
    assert settled.item() < found.sigma.item() * (1 - 1e-4), seed


def test_unreliable_counts_take_the_exact_route(monkeypatch, seed):
    """A matrix whose inertia count is not trusted (a nearly singular pivot block) gets the exact
    mode's "mp-moments" row; the others keep their estimates."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.stack([spiked(300, 700, 5, gen) for _ in range(3)])
    real = fast_snr.count_above

    def second_unreliable(g, shift):
        counts, reliable = real(g, shift)
        reliable[1] = False
        return counts, reliable

    monkeypatch.setattr(fast_snr, "count_above", second_unreliable)
    table = fast_snr.fast_snr_statistics(w)
    s = torch.linalg.svdvals(w.double())
    exact = noise_edge.deflated_moments(*noise_edge.spectrum_moments(s.flip(-1)), 300, 700)
    assert table[1, 1].item() == pytest.approx(exact.sigma[1].item(), rel=1e-12), seed
    tau = exact.sigma * threshold_factor(300, 700)
    assert table[1, 4].item() == pytest.approx(s[1][s[1] <= tau[1]].sum().item(), rel=1e-12), seed  # the actual noise sum
    for i in (0, 2):
        assert table[i, 4].item() != pytest.approx(s[i][s[i] <= tau[i]].sum().item(), rel=1e-9), seed  # the MP law's


def test_estimators_change_sigma_as_noise_edge_says(seed):
    gen = torch.Generator().manual_seed(seed)
    weights = {"model.layers.0.mlp.up_proj.weight": spiked(256, 512, 3, gen, torch.float64)}
    s = torch.linalg.svdvals(weights["model.layers.0.mlp.up_proj.weight"]).flip(-1).unsqueeze(0)
    for estimator in noise_edge.ESTIMATORS:
        row = spectrum_fast.scan(weights, device="cpu", progress=False, estimator=estimator).rows[0]
        expected = noise_edge.estimate_sigma(s, 256, 512, estimator).item()
        assert row.sigma == pytest.approx(expected, rel=1e-9), (seed, estimator)
        assert not row.estimate


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "quick"}, "method 'quick' is not known"),
    ({"estimator": "iqr"}, "estimator 'iqr' is not known"),
    ({"method": "fast", "estimator": "spectrum"}, "method='fast' estimates sigma by mp-moments"),
])
def test_bad_method_or_estimator_is_one_clear_error(kwargs, message):
    weights = {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 16)}
    with pytest.raises(SelectionError, match=message):
        spectrum_fast.scan(weights, device="cpu", progress=False, **kwargs)


def test_cli_fast_mode_writes_the_reference_files(tmp_path, seed):
    from conftest import run_cli

    gen = torch.Generator().manual_seed(seed)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model(gen).items()}, str(tmp_path / "model.safetensors"))
    out = tmp_path / "out"
    proc = run_cli("scan", tmp_path / "model.safetensors", "--method", "fast", "--out", out,
                   "--no-progress", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fast mode: estimates" in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3 and all(x.startswith("snr_results_") for x in names), names
    assert names[0].endswith(".json") and names[1].endswith("_sorted.json") and names[2].endswith("50percent.yaml")
