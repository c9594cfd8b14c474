"""The Generate page in a real browser (Debian Chromium through Playwright) against a real dashboard and tiny real
models: the decoder selector shows only its own sliders, every sample says why it stopped, and learned mode pairs
the agent with its own LM, shows the parameters the controller set per token instead of sliders that would do
nothing, and warns when the user picks another LM.
"""
from __future__ import annotations

import json
import time
import unittest

from core.testing import slow
from tests.browser import BrowserTestCase, browser_unavailable
from tests.support import write_tiny_experiment

LM = "20260101-120000-commit_nogit-config_0123456789"
EOS = "20260101-120002-commit_nogit-config_0123456789"
RL = "20260101-120003-commit_nogit-config_0123456789-rl_0123456789"


def make_eos_lm(exp_dir) -> None:
    """Overwrite a tiny experiment's weights with a model that always says end-of-text next."""
    import torch

    from plugins.tidal.DataPipeline import EOT_TOKEN_ID

    path = exp_dir / "transformer-lm_v1.0.0.pth"
    state = torch.load(path, weights_only=True)
    state["output_projection.bias"][EOT_TOKEN_ID] = 1e4
    torch.save(state, path)


@slow
@unittest.skipIf(browser_unavailable(), browser_unavailable() or "")
class GeneratePageTest(BrowserTestCase):
    @classmethod
    def populate(cls, root):
        from tests.test_dashboard_generate import make_rl_checkpoint

        write_tiny_experiment(root, LM, steps=5, checkpoint=True)
        make_eos_lm(write_tiny_experiment(root, EOS, steps=5, checkpoint=True))
        make_rl_checkpoint(root, RL, LM)
        (root / RL / "metadata.json").write_text(json.dumps({"type": "rl", "created_at": time.time(),
                                                             "source_experiment": LM}))

    def setUp(self):
        super().setUp()
        self.page.goto(f"{self.server.url}/#/generate")
        self.page.wait_for_function("document.querySelectorAll('#gen-checkpoint option').length > 2")

    def generate(self):
        from playwright.sync_api import expect

        self.page.fill("#gen-prompt", "Once upon a time")
        self.page.fill("#gen-seed", "3")
        self.page.click("#gen-run")
        expect(self.page.locator("#gen-run")).to_have_text("Generate", timeout=60_000)  # the answer has been shown

    def test_the_decoder_selector_shows_its_own_sliders_and_each_sample_says_why_it_stopped(self):
        from playwright.sync_api import expect

        page = self.page
        page.select_option("#gen-mode", "none")
        page.select_option("#gen-checkpoint", f"experiments/{LM}/transformer-lm_v1.0.0.pth")
        expect(page.locator("#gen-decoder")).to_be_visible()
        self.assertEqual(page.eval_on_selector_all("#gen-decoder option", "os => os.map(o => o.value)"),
                         ["plain", "greedy", "min_p", "mirostat", "edt"])
        page.select_option("#gen-decoder", "mirostat")
        for visible in ("tau", "eta", "temperature", "maxTokens"):
            expect(page.locator(f"#gen-{visible}")).to_be_visible()
        for hidden in ("topK", "topP", "minP", "edtT0", "modulation"):
            expect(page.locator(f"#gen-{hidden}")).to_be_hidden()
        self.generate()
        stop = page.locator('[data-testid="gen-stop"]')
        expect(stop).to_have_attribute("data-reason", "length")
        expect(page.locator('[data-testid="gen-stats"]')).to_contain_text("mirostat")

        page.select_option("#gen-checkpoint", f"experiments/{EOS}/transformer-lm_v1.0.0.pth")
        self.generate()
        expect(stop).to_have_attribute("data-reason", "eos")
        expect(stop).to_contain_text("end-of-text")
        expect(page.locator('[data-testid="gen-stats"]')).to_contain_text("0 tokens")
        self.assertEqual(self.errors.messages, [])

    def test_learned_mode_pairs_the_agent_with_its_own_lm_and_shows_what_the_controller_set(self):
        from playwright.sync_api import expect

        page = self.page
        page.select_option("#gen-mode", "learned")
        self.assertEqual(page.input_value("#gen-checkpoint"), "")  # the agent's own LM
        expect(page.locator('[data-testid="gen-controlled"]')).to_be_visible()
        for hidden in ("decoder", "temperature", "topK", "topP", "minP", "modulation"):
            expect(page.locator(f"#gen-{hidden}")).to_be_hidden()
        self.generate()
        expect(page.locator('[data-testid="gen-stats"]')).to_contain_text(f"LM experiments/{LM}/")
        token = page.locator('[data-testid="gen-output"] span.tok').first
        expect(token).to_be_visible()
        title = token.get_attribute("title")
        for shown in ("T=", "top-k=", "top-p=", "min-p=", "rep="):  # per token, what the controller chose
            self.assertIn(shown, title)
        expect(page.locator('[data-testid="gen-warnings"] .notice')).to_have_count(0)

        page.select_option("#gen-checkpoint", f"experiments/{EOS}/transformer-lm_v1.0.0.pth")
        self.generate()
        expect(page.locator('[data-testid="gen-warnings"]')).to_contain_text(f"trained on {LM}")
        self.assertEqual(self.errors.messages, [])


if __name__ == "__main__":
    unittest.main()
