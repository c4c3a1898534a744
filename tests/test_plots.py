import numpy as np
import torch

from vitlab import plots


def _random_sim(rows, cols):
    return torch.rand(rows, cols, rows, cols, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_mosaic_places_each_tile_and_hover_labels():
    rows, cols = 3, 5
    sim = _random_sim(rows, cols)
    z, custom = plots.tile_mosaic(sim)
    assert z.shape == (rows * rows + rows - 1, cols * cols + cols - 1)
    covered = np.zeros(z.shape, dtype=bool)
    for i in range(rows):
        for j in range(cols):
            for k in range(rows):
                for l in range(cols):
                    y, x = i * (rows + 1) + k, j * (cols + 1) + l
                    assert z[y, x] == np.float32(sim[i, j, k, l])
                    assert tuple(custom[y, x]) == (i + 1, j + 1, k + 1, l + 1)
                    assert plots.mosaic_tile(sim.shape, x, y) == (i, j)
                    covered[y, x] = True
    assert np.isnan(z[~covered]).all()  # the gaps between tiles stay empty
    gaps = np.argwhere(~covered)
    assert all(plots.mosaic_tile(sim.shape, x, y) is None for y, x in gaps)


def test_position_similarity_figure_is_readable():
    fig = plots.position_similarity_figure(_random_sim(4, 4), title="demo")
    heat = fig.data[0]
    assert (heat.zmin, heat.zmax) == (-1, 1)
    assert fig.layout.xaxis.title.text == "Input patch column" and fig.layout.yaxis.title.text == "Input patch row"
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis.scaleanchor == "x"
    assert list(fig.layout.xaxis.ticktext) == ["1", "2", "3", "4"]
    assert fig.layout.title.text == "demo"


def test_patch_similarity_figure_shows_that_patch():
    sim = _random_sim(3, 4)
    fig = plots.patch_similarity_figure(sim, 2, 1)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), sim[2, 1].numpy())
    assert (fig.data[1].x[0], fig.data[1].y[0]) == (2, 3)  # 1-based marker on the patch
