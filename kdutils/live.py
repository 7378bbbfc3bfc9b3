"""Live distillation for a class: move T, alpha or the seed, see study 4's TL+KD head retrain.

The heads of study 4 train on cached frozen features (`kdutils.tlkd_features`), about a
second each at `small` on two CPU cores, so a slider can retrain one at every change. `LiveDistillation`
is the plain, tested computation; `panel` wraps it in ipywidgets (debounced, the
work done off the kernel's message loop). Without a front end (papermill) the
panel is displayed once, with the state it starts in printed beside it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

from . import metrics, tlkd
from .plots import role_color
from .tlkd_features import head_logits


@dataclass
class LiveDistillation:
    """Test accuracy (%) of a TL+KD head for any (T, alpha, seed), beside TL and the teacher of that seed.

    `student` / `teacher` map "train", "val", "test" to cached `HeadInputs` of
    the same images (no teacher logits needed: they come from the teacher
    head of the seed); `labels` maps the splits to labels; `hp` is the H1
    recipe. Per seed the teacher head and the TL head train once (`tlkd.seed_heads`)
    and are remembered; each call trains one TL+KD head, exactly as H1 does.
    """

    student: dict
    teacher: dict
    labels: dict
    hp: tlkd.HeadParams
    num_classes: int
    _per_seed: dict = field(default_factory=dict, repr=False)

    def _test_accuracy(self, run: tlkd.HeadRun, role: dict) -> float:
        return metrics.accuracy(self.labels["test"], head_logits(run.head, role["test"]))

    def references(self, seed: int) -> dict:
        """The seed's teacher and TL accuracies and the teacher's logits of every training view (cached)."""
        if seed not in self._per_seed:
            teacher_run, students, distill = tlkd.seed_heads(self.student, self.teacher, self.labels, self.hp, (0.0,),
                                                             num_classes=self.num_classes, seed=seed)
            self._per_seed[seed] = {"teacher": self._test_accuracy(teacher_run, self.teacher),
                                    "TL": self._test_accuracy(students[0.0], self.student), "distill_source": distill}
        return self._per_seed[seed]

    def accuracy(self, temperature: float, alpha: float, seed: int) -> dict:
        """{"TL+KD", "TL", "teacher": test accuracy in %, "seconds": time of this call}."""
        t0 = time.perf_counter()
        ref = self.references(seed)
        kd = tlkd.train_head(ref["distill_source"], self.labels["train"], self.student["val"], self.labels["val"],
                             replace(self.hp, temperature=float(temperature), alpha=float(alpha)),
                             num_classes=self.num_classes, seed=seed)
        return {"TL+KD": self._test_accuracy(kd, self.student), "TL": ref["TL"], "teacher": ref["teacher"],
                "seconds": time.perf_counter() - t0}


def describe(temperature: float, alpha: float, seed: int, result: dict) -> str:
    """The panel's accuracy label (also what papermill prints)."""
    return (f"T = {temperature:g}, alpha = {alpha:.2f}, seed {seed}: TL+KD {result['TL+KD']:.2f}% | "
            f"TL {result['TL']:.2f}% | teacher {result['teacher']:.2f}%  (retrained in {result['seconds']:.2f} s)")


ROLES = {"teacher": "teacher", "TL": "student", "TL+KD": "kd"}


def bars_html(result: dict) -> str:
    """Horizontal bars of the three accuracies, as HTML (drawn by the browser, no figure to re-render)."""
    rows = "".join(
        f'<div style="display:flex;align-items:center;gap:6px;margin:2px 0">'
        f'<span style="width:60px">{name}</span>'
        f'<span style="display:inline-block;height:14px;width:{3 * result[name]:.0f}px;'
        f'background:{role_color(ROLES[name])}">'
        f'</span><span>{result[name]:.2f}%</span></div>'
        for name in ("teacher", "TL", "TL+KD"))
    return f'<div class="kd-live-bars">{rows}</div>'


class Debounced:
    """Calls `func` once, `wait_s` after the last of a burst of calls, on a worker thread."""

    def __init__(self, func, wait_s: float):
        self.func, self.wait_s, self._timer, self._lock = func, wait_s, None, threading.Lock()

    def __call__(self, *args):
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.wait_s, self.func, args)
            self._timer.start()


def panel(live: LiveDistillation, *, temperature: float, alpha: float, seed: int, wait_s: float = 0.3):
    """Sliders for T (1-20), alpha (0-1) and the seed, the accuracy label and bars; starts at the given state."""
    import ipywidgets as widgets

    style = {"description_width": "60px"}
    sliders = {
        "temperature": widgets.IntSlider(value=int(temperature), min=1, max=20, description="T", style=style,
                                         continuous_update=False),
        "alpha": widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="alpha",
                                     style=style, continuous_update=False, readout_format=".2f"),
        "seed": widgets.IntSlider(value=seed, min=0, max=99, description="seed", style=style,
                                  continuous_update=False),
    }
    label = widgets.Label(layout=widgets.Layout(width="auto"))
    label.add_class("kd-live-label")
    bars = widgets.HTML()
    one_at_a_time = threading.Lock()

    def redraw(t, a, s):
        with one_at_a_time:
            try:
                result = live.accuracy(t, a, s)
            except Exception as err:  # on a worker thread: show it, or nobody sees it
                label.value = f"retraining failed: {type(err).__name__}: {err}"
                raise
            label.value, bars.value = describe(t, a, s, result), bars_html(result)

    retrain = Debounced(redraw, wait_s)
    for slider in sliders.values():
        slider.observe(lambda _: retrain(*(w.value for w in sliders.values())), names="value")
    redraw(temperature, alpha, seed)
    box = widgets.VBox([widgets.HBox(list(sliders.values())), label, bars])
    box.add_class("kd-live-panel")
    return box, label.value
