"""
A matplotlib backend whose ``show()`` writes every open figure to a PNG file, for rl-zoo3's plot scripts.

``rl_zoo3.plots.plot_train`` and ``all_plots`` end with ``plt.show()`` and have no output option. Run them with this
backend to get files instead of windows (on a headless machine too)::

    MPLBACKEND=module://sb3_trpo_ext.zoo.png_backend SB3_TRPO_EXT_PLOT_DIR=plots \\
        python -m rl_zoo3.plots.plot_train --algo trpo_ext --env CartPole-v1 -f logs

Files are named after the figure (``Training_Episodic_Reward.png``, ``Results_CartPole-v1.png``) and written to
``$SB3_TRPO_EXT_PLOT_DIR`` (default: the current directory).
"""

import os
import re
from pathlib import Path

from matplotlib import pyplot as plt
from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

PLOT_DIR_ENV_VAR = "SB3_TRPO_EXT_PLOT_DIR"

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def figure_path(label: str, number: int | str, folder: Path) -> Path:
    """:return: the PNG path of a figure (its label with unsafe characters replaced, or its number)"""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or f"figure_{number}"
    return folder / f"{stem}.png"


def show(*args: object, **kwargs: object) -> None:
    """Save every open figure as a PNG file, then close it."""
    folder = Path(os.environ.get(PLOT_DIR_ENV_VAR, "."))
    folder.mkdir(parents=True, exist_ok=True)
    for manager in Gcf.get_all_fig_managers():
        figure = manager.canvas.figure
        path = figure_path(str(figure.get_label()), manager.num, folder)
        figure.savefig(path)
        print(f"Saved {path}")
    plt.close("all")
