"""Evaluation: token-weighted validation loss, nats per byte, fixed-prompt samples, evaluation_results.json."""
import json
import math
import unittest

import torch
import torch.nn.functional as F

from plugins.tidal.DataPipeline import TokenDataset, get_tokenizer
from plugins.tidal.Evaluator import Evaluator, token_byte_lengths, validation_loss
from plugins.tidal.tests.support import TempDirTestCase, tiny_config
from plugins.tidal.TransformerLM import TransformerLM, model_state_dict


class TestEvaluator(TempDirTestCase):
    def setUp(self):
        super().setUp()
        torch.manual_seed(0)
        self.config = tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"), BUILTIN_NUM_STORIES=60)
        self.model = TransformerLM(50257, self.config).eval()
        self.data = TokenDataset(self.config, "validation", progress=False)

    def test_byte_lengths_match_the_tokenizer(self):
        lengths = token_byte_lengths(50257)
        enc = get_tokenizer()
        ids = enc.encode_ordinary("Once upon a time, a café")
        self.assertEqual(int(lengths[ids].sum()), len("Once upon a time, a café".encode()))
        self.assertEqual(lengths[50256].item(), 0)

    def test_loss_is_token_weighted_over_the_whole_split(self):
        result = validation_loss(self.model, self.data, 3, torch.device("cpu"), byte_lengths=token_byte_lengths(50257))
        x, y = self.data.batch(range(len(self.data)))
        with torch.no_grad():
            logits = self.model(x).logits
        nats = F.cross_entropy(logits.reshape(-1, 50257), y.reshape(-1), reduction="sum").item()
        self.assertEqual(result["tokens"], y.numel())
        self.assertAlmostEqual(result["loss"], nats / y.numel(), places=4)
        self.assertAlmostEqual(result["nats_per_byte"], nats / token_byte_lengths(50257)[y].sum().item(), places=4)

    def test_run_writes_results_with_the_four_prompts(self):
        checkpoint = self.tmp / "m.pth"
        torch.save(model_state_dict(self.model), checkpoint)
        results = Evaluator(self.config, self.tmp, checkpoint).run()
        saved = json.loads((self.tmp / "evaluation_results.json").read_text())
        self.assertEqual(saved["perplexity"], results["perplexity"])
        self.assertAlmostEqual(saved["perplexity"], math.exp(saved["validation_loss"]), places=3)
        self.assertEqual([s["prompt"] for s in saved["samples"]],
                         ["Once upon a time", "The little cat", "Mom said to", "One day, a boy"])
        self.assertTrue(all(s["generated"].startswith(s["prompt"]) for s in saved["samples"]))


if __name__ == "__main__":
    unittest.main()
