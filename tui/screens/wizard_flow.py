"""The wizard's steps in order, as classes: model, dataset, method, training, review.

Apart from the frame (tui.screens.wizard) because the steps subclass that frame: the frame is
handed this flow instead of importing them.
"""

from __future__ import annotations

from tui.screens.review import ReviewScreen
from tui.screens.wizard import WizardStep
from tui.screens.wizard_dataset import DatasetStep
from tui.screens.wizard_method import MethodStep
from tui.screens.wizard_model import ModelStep
from tui.screens.wizard_training import TrainingStep
from tui.wizard_state import WizardState

FLOW: tuple[type[WizardStep], ...] = (
    ModelStep,
    DatasetStep,
    MethodStep,
    TrainingStep,
    ReviewScreen,
)


def step_screen(index: int, state: WizardState) -> WizardStep:
    """The screen of wizard step ``index`` (0 model … 4 review), bound to ``state``."""
    return FLOW[index](state, flow=FLOW)
