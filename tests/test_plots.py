import numpy as np
from PIL import Image

from synfer.plots import plot_curves, plot_matrix


def test_plots_write_png_files(tmp_path):
    matrix = np.array([[5, 1], [0, 4]])
    path = plot_matrix(matrix, ["happy", "sad"], ["happy", "sad"], tmp_path / "m.png", title="confusion")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    curves = plot_curves({"loss": [(0, 1.0), (1, 0.5)], "empty": []}, tmp_path / "c.png")
    with Image.open(curves) as image:
        assert image.format == "PNG"
