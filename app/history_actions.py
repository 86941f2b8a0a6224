"""What the History strip's results can be asked to do: apply, show, discard, copy parameters, vary (a mixin of
MainWindow, as FileActions is)."""
from __future__ import annotations

import random
from dataclasses import replace

from app.dialogs import guarded

VARIATIONS = 4
VARIATION_STRENGTH = 0.25


class HistoryActions:
    @guarded
    def apply_history(self, entry: int, image: int = 0):
        h = self.doc.history[entry]
        self.doc.apply_result(h.images[image], region=h.region)
        self.canvas.set_preview(None)

    def show_history(self, entry: int, image: int) -> None:
        h = self.doc.history[entry]
        self.canvas.set_preview(h.images[image], h.region)

    @guarded
    def discard_history(self, entry: int):
        self.doc.discard_history(entry)
        self.canvas.set_preview(None)

    @guarded
    def copy_history(self, entry: int):
        self.doc.copy_parameters(entry)
        self._sync_all()

    @guarded
    def vary_history(self, entry: int, image: int = 0) -> int:
        """A1111's variation seed from a result: its seed kept (Seed fixed) and VARIATIONS jobs queued, each mixing in
        another random seed's noise at the Variation strength (VARIATION_STRENGTH when it was off). Returns how many."""
        seed = self.doc.history[entry].seeds[image]
        self.doc.set_param("seed", int(seed) % 2**31)
        self.doc.set_param("seed_mode", "fixed")
        if self.doc.params.variation_strength <= 0:
            self.doc.set_param("variation_strength", VARIATION_STRENGTH)
        self.doc.anchor()
        base = replace(self.doc.to_request(self.settings, seed=seed), batch_size=1)
        jobs = [(replace(base, variation_seed=random.randrange(2**31)), self.doc.region, self.doc.generation_rect())
                for _ in range(VARIATIONS)]
        self.queue.extend(jobs)
        self.generate_bar.queued = len(self.queue)
        self._next()
        self.statusBar().showMessage(f"{VARIATIONS} variations of seed {seed} queued", 5000)
        return len(jobs)
