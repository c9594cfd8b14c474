"""Decoding: the sampling filters and samplers shared by generation, the RL environment and the study (their speed
and semantics), and the decoders built on them."""
import math
import unittest

import torch

from plugins.tidal.Decoding import (
    DECODERS,
    MIN_P_FLOOR,
    ControlledDecoder,
    Decoder,
    DecodeStep,
    EDTDecoder,
    MirostatDecoder,
    PlainDecoder,
    SamplingParams,
    apply_params,
    apply_repetition_penalty,
    filter_logits,
    invert_cdf,
    k_largest,
    make_decoder,
    recent_tokens,
    sample_tokens,
    validate_sampling,
)


class TestSamplingFilters(unittest.TestCase):
    def test_repetition_penalty_divides_positive_and_multiplies_negative(self):
        logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
        seen = torch.tensor([[True, True, False, False]])
        out = apply_repetition_penalty(logits, seen, 2.0)
        torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0, -1.0]]))

    def test_repetition_penalty_from_token_ids_equals_the_mask_form(self):
        logits = torch.randn(3, 20)
        ids = torch.tensor([[4, 7, 4, -1], [0, 19, -1, -1], [5, 5, 5, 5]])
        mask = torch.zeros(3, 20, dtype=torch.bool)
        for row, toks in enumerate(ids.tolist()):
            mask[row, [t for t in toks if t >= 0]] = True
        torch.testing.assert_close(apply_repetition_penalty(logits, ids, torch.tensor([1.5, 2.0, 3.0])),
                                   apply_repetition_penalty(logits, mask, torch.tensor([1.5, 2.0, 3.0])))

    def test_repetition_penalty_per_row(self):
        logits = torch.tensor([[2.0, 2.0], [2.0, 2.0]])
        seen = torch.tensor([[True, False], [True, False]])
        out = apply_repetition_penalty(logits, seen, torch.tensor([1.0, 4.0]))
        torch.testing.assert_close(out, torch.tensor([[2.0, 2.0], [0.5, 2.0]]))

    def test_top_k_keeps_k_largest(self):
        logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
        out = filter_logits(logits, top_k=2)
        self.assertEqual(torch.isfinite(out).nonzero()[:, 1].tolist(), [1, 2])
        self.assertEqual(out[0, 1].item(), 4.0)

    def test_top_p_keeps_smallest_set_reaching_p_including_crossing_token(self):
        probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
        logits = probs.log()
        def kept(p):
            return torch.isfinite(filter_logits(logits, top_p=p)).nonzero()[:, 1].tolist()

        self.assertEqual(kept(0.45), [0])       # reached by the first token alone
        self.assertEqual(kept(0.6), [0, 1])     # the crossing token is kept
        self.assertEqual(kept(0.79), [0, 1])
        self.assertEqual(kept(0.81), [0, 1, 2])
        self.assertEqual(kept(1.0), [0, 1, 2, 3])

    def test_top_p_is_applied_after_top_k_on_the_renormalised_distribution(self):
        logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
        # top-k 2 renormalises to (4/7, 3/7); p=0.5 is reached by the first token alone.
        out = filter_logits(logits, top_k=2, top_p=0.5)
        self.assertEqual(torch.isfinite(out).nonzero()[:, 1].tolist(), [0])

    def test_per_row_top_k_and_top_p(self):
        logits = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]]).log()
        out = filter_logits(logits, top_k=torch.tensor([1, 3]), top_p=torch.tensor([1.0, 0.6]))
        self.assertEqual(torch.isfinite(out).sum(dim=1).tolist(), [1, 2])

    def test_temperature_scales_logits(self):
        logits = torch.tensor([[1.0, 2.0]])
        torch.testing.assert_close(filter_logits(logits, temperature=0.5), torch.tensor([[2.0, 4.0]]))

    def test_temperature_zero_is_greedy(self):
        logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])
        for _ in range(5):
            self.assertEqual(sample_tokens(filter_logits(logits, temperature=0.0)).tolist(), [1, 0])

    def test_sampling_follows_the_distribution(self):
        logits = torch.tensor([[math.log(0.7), math.log(0.3)]]).expand(20000, 2)
        draws = sample_tokens(logits, generator=torch.Generator().manual_seed(0))
        self.assertAlmostEqual(draws.float().mean().item(), 0.3, delta=0.02)

    def test_per_row_generators_make_rows_reproducible_alone(self):
        logits = torch.randn(3, 50)
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        batch = sample_tokens(logits, generator=gens)
        alone = sample_tokens(logits[2:3], generator=[torch.Generator().manual_seed(12)])
        self.assertEqual(batch[2].item(), alone[0].item())

    def test_invalid_parameters_raise(self):
        for kwargs in ({"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
                       {"repetition_penalty": 0.0}, {"temperature": float("nan")}):
            with self.subTest(**kwargs), self.assertRaises(ValueError):
                validate_sampling(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0,
                                                   "repetition_penalty": 1.0, **kwargs})


def reference_top_k(logits, temperature, top_k):
    """filter_logits' general path for top-k alone: divide the whole vocabulary, keep everything >= the k-th value."""
    t = temperature.unsqueeze(1)
    scaled = logits / torch.where(t == 0, torch.ones_like(t), t)
    k = torch.where(temperature == 0, torch.ones_like(top_k), top_k)
    kth = scaled.topk(int(k.max()), dim=-1).values.gather(1, (k - 1).unsqueeze(1))
    return scaled.masked_fill(scaled < kth, float("-inf"))


def reference_invert_cdf(probs, u):
    """invert_cdf as one cumsum over the whole vocabulary."""
    cdf = probs.float().cumsum(dim=-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1).clamp(max=probs.shape[1] - 1)


class TestTopKFastPath(unittest.TestCase):
    """filter_logits with top-k as the only filter takes a path that divides only the kept values (ADR 0016)."""

    def test_same_logits_as_dividing_the_whole_vocabulary(self):
        g = torch.Generator().manual_seed(0)
        for V in (100, 50257):
            logits = torch.randn(6, V, generator=g) * 3
            temperature = torch.tensor([0.8, 1.0, 0.0, 1.7, 0.3, 0.8])
            top_k = torch.tensor([50, 1, 50, 7, 99, 3])
            with self.subTest(V=V):
                self.assertTrue(torch.equal(filter_logits(logits, temperature, top_k),
                                            reference_top_k(logits, temperature, top_k)))
                self.assertTrue(torch.equal(filter_logits(logits, 0.8, 50),
                                            reference_top_k(logits, torch.full((6,), 0.8), torch.full((6,), 50))))

    def test_ties_at_the_k_th_value_are_all_kept(self):
        logits = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0], [4.0, 2.0, 1.0, 0.0, -1.0]])
        out = filter_logits(logits, 1.0, 2)
        self.assertEqual(torch.isfinite(out).sum(dim=1).tolist(), [4, 2])
        self.assertTrue(torch.equal(out, reference_top_k(logits, torch.ones(2), torch.tensor([2, 2]))))


class TestChunkedTopK(unittest.TestCase):
    """`k_largest` finds the k largest through chunk maxima instead of a selection over the whole vocabulary."""

    def test_same_values_and_indices_as_torch_topk(self):
        g = torch.Generator().manual_seed(0)
        for V, k in ((50257, 5), (50257, 51), (50257, 64), (1000, 3), (70, 5), (64 * 9, 9)):
            x = torch.randn(4, V, generator=g)
            x[1, :V // 2] = float("-inf")  # a row the filters emptied in part
            with self.subTest(V=V, k=k):
                values, indices = k_largest(x, k)
                ref = x.topk(k, dim=-1)
                self.assertTrue(torch.equal(values, ref.values))
                self.assertTrue(torch.equal(indices, ref.indices))

    def test_ties_give_the_same_values(self):
        # the k largest values are the same multiset whichever of the tied entries is returned
        x = torch.zeros(2, 4096)
        x[0, ::97] = 1.0
        values, indices = k_largest(x, 60)
        self.assertTrue(torch.equal(values, x.topk(60, dim=-1).values))
        self.assertTrue(torch.equal(x.gather(1, indices), values))


class TestBlockedInverseCDF(unittest.TestCase):
    """invert_cdf finds the block, then the token inside it; it must pick the token one long cumsum picks."""

    def test_same_tokens_as_one_cumsum_over_the_vocabulary(self):
        g = torch.Generator().manual_seed(1)
        V = 50257
        dense = torch.rand(8, V, generator=g)
        sparse = filter_logits(torch.randn(8, V, generator=g), 0.8, 50).softmax(dim=-1)  # top-k 50: mostly zero
        tail = torch.zeros(8, V)
        tail[:, -5:] = torch.rand(8, 5, generator=g)  # all mass in the short last block
        for name, probs in (("dense", dense), ("top-k", sparse), ("tail", tail)):
            for _ in range(200):
                u = torch.rand(8, generator=g)
                with self.subTest(name):
                    self.assertTrue(torch.equal(invert_cdf(probs, u), reference_invert_cdf(probs, u)))

    def test_never_a_zero_probability_token_even_at_the_ends_of_u(self):
        probs = torch.zeros(3, 50257)
        probs[0, [5, 70000 % 50257, 50256]] = 1.0
        probs[1, 256:260] = 0.25
        probs[2, 1000] = 1.0
        for u in (0.0, 0.5, 1.0 - 2 ** -24):
            tokens = invert_cdf(probs, torch.full((3,), u))
            self.assertTrue(bool((probs.gather(1, tokens.unsqueeze(1)) > 0).all()), f"u={u}: {tokens.tolist()}")

    def test_small_vocabularies_use_one_cumsum(self):
        probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]])
        self.assertEqual([invert_cdf(probs, torch.tensor([u])).item() for u in (0.05, 0.1, 0.69, 0.71)], [0, 2, 2, 3])


def reference_params(logits, history, lengths, params):
    """The sampling distribution through the logits: the sparse penalty, filter_logits, then a softmax."""
    if bool((params.repetition_penalty != 1.0).any()):
        logits = apply_repetition_penalty(logits, recent_tokens(history, lengths, params.penalty_window),
                                          params.repetition_penalty)
    return filter_logits(logits, params.temperature, params.top_k, params.top_p, params.min_p).softmax(dim=-1)


class TestTemperedProbabilities(unittest.TestCase):
    """Temperature, min-p and the repetition penalty without top-k or top-p go straight to unnormalised probabilities
    2^((x − max)·log2 e / t), cut at min-p by one scalar threshold (ADR 0016, round 3): they must be the softmax of
    the filtered logits, keep the same tokens and sample the same tokens."""

    def setUp(self):
        g = torch.Generator().manual_seed(3)
        self.logits = torch.randn(8, 50257, generator=g) * 3
        self.logits[5] *= 10  # a row far from uniform: most tokens far below min-p, some exp2 underflows
        self.history = torch.randint(0, 50257, (8, 40), generator=g)
        self.history[:, :8] = self.logits.topk(8, dim=-1).indices  # the penalty hits the top tokens
        self.lengths = torch.tensor([40, 30, 12, 40, 5, 40, 20, 1])
        B = 8
        self.params = SamplingParams(
            temperature=torch.tensor([1.0, 0.7, 1.3, 0.3, 1.0, 1.0, 2.0, 0.5]),
            top_k=torch.zeros(B, dtype=torch.long), top_p=torch.ones(B),
            min_p=torch.tensor([0.1, 0.05, 0.2, 0.0, 0.99, 0.1, 0.0, 1e-6]),
            repetition_penalty=torch.tensor([1.0, 1.3, 1.3, 1.0, 2.0, 1.3, 0.8, 1.0]), penalty_window=16)

    def test_the_probabilities_are_the_softmax_of_the_filtered_logits(self):
        step = apply_params(self.logits, self.history, self.lengths, self.params)
        self.assertIsNotNone(step.unnormalised_probs)  # this case takes the direct path
        probs = step.probs()
        reference = reference_params(self.logits, self.history, self.lengths, self.params)
        # the same tokens are kept, except that rows without min-p drop those under MIN_P_FLOOR of the top one
        floor = MIN_P_FLOOR * reference.amax(dim=-1, keepdim=True)
        self.assertFalse(torch.equal(probs > 0, reference > 0))  # row 3 (t 0.3, no min-p) has such tokens
        self.assertTrue(torch.equal(probs > 0, (reference > 0) & (reference >= floor)))
        torch.testing.assert_close(probs / probs.sum(dim=-1, keepdim=True), reference, rtol=2e-5, atol=1e-12)
        # the logits view is the same distribution up to a per-row constant
        torch.testing.assert_close(step.logits.log_softmax(dim=-1).exp(), reference, rtol=2e-5, atol=1e-12)

    def test_the_same_tokens_as_sampling_the_softmax(self):
        step = apply_params(self.logits, self.history, self.lengths, self.params)
        reference = reference_params(self.logits, self.history, self.lengths, self.params)
        g = torch.Generator().manual_seed(4)
        for _ in range(300):
            u = torch.rand(8, generator=g)
            self.assertTrue(torch.equal(invert_cdf(step.probs(), u), invert_cdf(reference, u)))

    def test_top_k_top_p_and_greedy_rows_keep_the_logits_path(self):
        for change in ({"top_k": torch.full((8,), 50)}, {"top_p": torch.full((8,), 0.9)},
                       {"temperature": torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 1])}):
            params = SamplingParams(**{**self.params.__dict__, **change})
            step = apply_params(self.logits, self.history, self.lengths, params)
            with self.subTest(change=list(change)):
                self.assertIsNone(step.unnormalised_probs)
                torch.testing.assert_close(step.probs(), reference_params(self.logits, self.history, self.lengths,
                                                                          params))

    def test_a_decode_step_from_logits_or_from_probabilities(self):
        logits = torch.tensor([[1.0, float("-inf"), 0.0]])
        from_logits = DecodeStep(logits)
        torch.testing.assert_close(from_logits.probs(), logits.softmax(dim=-1))
        from_probs = DecodeStep(probs=torch.tensor([[4.0, 0.0, 1.0]]))
        self.assertEqual(from_probs.logits[0, 1].item(), float("-inf"))
        torch.testing.assert_close(from_probs.logits.softmax(dim=-1), torch.tensor([[0.8, 0.0, 0.2]]))
        with self.assertRaises(ValueError):
            DecodeStep()


class TestDecoders(unittest.TestCase):
    """The decoder classes behind the one protocol: decode -> DecodeStep, observe, reset_rows."""

    def test_edt_is_sharp_where_the_model_is_sure_and_near_t0_where_it_is_not(self):
        peaked = torch.full((1, 50), -20.0)
        peaked[0, 3] = 10.0
        flat = torch.zeros(1, 50)
        decoder = EDTDecoder(t0=1.2, theta=1.0, n=0.8)
        sure = float(decoder.decode(peaked, torch.zeros(1, 0, dtype=torch.long), None).params.temperature[0])
        unsure = float(decoder.decode(flat, torch.zeros(1, 0, dtype=torch.long), None).params.temperature[0])
        self.assertLess(sure, 0.01)
        self.assertAlmostEqual(unsure, 1.2 * 0.8 ** (1.0 / math.log(50)), places=4)

    def test_mirostat_lowers_mu_after_surprising_tokens_and_resets_rows(self):
        decoder = MirostatDecoder(tau=2.0, eta=0.5)
        logits = torch.zeros(2, 8)  # uniform: every token costs 3 bits, within mu = 2 tau = 4
        step = decoder.decode(logits, torch.zeros(2, 0, dtype=torch.long), None)
        self.assertTrue(torch.isfinite(step.logits).all())
        decoder.observe(torch.tensor([0, 1]), step)  # 3 bits of surprise > tau: mu = 4 - 0.5 (3 - 2)
        torch.testing.assert_close(decoder.mu, torch.tensor([3.5, 3.5]))
        decoder.reset_rows(torch.tensor([1]))
        self.assertEqual(decoder.mu.tolist(), [3.5, 4.0])
        tight = MirostatDecoder(tau=1.0).decode(logits, torch.zeros(2, 0, dtype=torch.long), None)
        self.assertEqual(torch.isfinite(tight.logits).sum(dim=1).tolist(), [1, 1])  # mu 2 < 3 bits: the top only

    def test_greedy_min_p_and_a_windowed_penalty(self):
        logits = torch.tensor([[3.0, 2.9, 0.0, -1.0]])
        history = torch.tensor([[0, 2, 2, 2]])  # token 0 is outside a window of 3
        greedy = make_decoder("greedy").decode(logits, history, None)
        self.assertEqual(torch.isfinite(greedy.logits).nonzero()[:, 1].tolist(), [0])
        min_p = make_decoder("min_p", min_p=0.5).decode(logits, history, None)
        self.assertEqual(torch.isfinite(min_p.logits).nonzero()[:, 1].tolist(), [0, 1])
        windowed = PlainDecoder(repetition_penalty=2.0, penalty_window=3).decode(logits, history, None)
        # sampling logits are defined up to a per-row constant: compare distributions
        torch.testing.assert_close(windowed.logits.softmax(dim=-1), logits.softmax(dim=-1))  # token 2 (logit 0) only
        whole = PlainDecoder(repetition_penalty=2.0).decode(logits, history, None)
        torch.testing.assert_close(whole.logits.softmax(dim=-1), torch.tensor([[1.5, 2.9, 0.0, -1.0]]).softmax(dim=-1))

    def test_make_decoder_names_and_errors(self):
        for name in DECODERS:
            self.assertIsInstance(make_decoder(name), Decoder)
        with self.assertRaisesRegex(ValueError, "unknown decoder 'beam'"):
            make_decoder("beam")
        with self.assertRaisesRegex(ValueError, "decoder 'edt'"):
            make_decoder("edt", top_k=5)

    def test_a_controlled_decoder_needs_an_action(self):
        class Space:
            def __call__(self, action):
                return SamplingParams.constant(action.shape[0], action.device, temperature=0.0)

            def describe(self):
                return {}
        decoder = ControlledDecoder(Space())
        with self.assertRaises(ValueError):
            decoder.decode(torch.zeros(1, 4), torch.zeros(1, 0, dtype=torch.long), None)
        step = decoder.decode(torch.tensor([[0.0, 1.0, 0.5, 0.2]]), torch.zeros(1, 0, dtype=torch.long), None,
                              torch.zeros(1))
        self.assertEqual(torch.isfinite(step.logits).nonzero()[:, 1].tolist(), [1])
