import torch

from maskrcnn.cli.synthetic import main
from maskrcnn.data.synthetic import CELL_TYPES, SyntheticCells


def test_default_images_are_deterministic_lazy_and_consistent():
    ds = SyntheticCells()  # the defaults: 128x160, 6-24 cells
    assert len(ds) == 48
    for i in (5, 0, 17):  # any order: image i depends on (seed, i) only
        s = ds.load(i)
        again = SyntheticCells().load(i)
        assert torch.equal(s.image, again.image)
        assert torch.equal(s.instances.masks.to_dense(), again.instances.masks.to_dense())
        assert s.image.shape == (1, 128, 160) and s.image.dtype == torch.float32
        assert torch.equal(torch.round(s.image * 255) / 255, s.image)  # 8-bit levels
        assert 6 <= len(s.instances) <= 24
        assert torch.equal(s.instances.boxes, s.instances.masks.tight_boxes())
        assert bool((s.instances.masks.areas() >= 12).all())
        assert s.meta["cell_type"] == ds.cell_type(i) == CELL_TYPES[int(s.instances.labels[0])]
    assert not torch.equal(ds.load(0).image, SyntheticCells(seed=1).load(0).image)
    assert set(ds.strata()) == set(CELL_TYPES)


def test_cells_are_visible_against_the_background():
    s = SyntheticCells(num_images=3, seed=2).load(1)
    inside = s.instances.masks.to_dense().any(0)
    assert float(s.image[0][inside].mean()) - float(s.image[0][~inside].mean()) > 0.12


def test_class_agnostic_labels():
    s = SyntheticCells(num_images=2, class_agnostic=True).load(1)
    assert s.meta["class_names"] == ("cell",) and s.instances.labels.unique().tolist() == [0]


def test_cli_writes_sartorius_layout(tmp_path, capsys):
    main(["--out", str(tmp_path), "--num-images", "2", "--height", "40", "--width", "48", "--cells", "2", "4"])
    assert (tmp_path / "train.csv").read_text().startswith("id,annotation,width,height,cell_type")
    assert len(list((tmp_path / "train").glob("*.png"))) == 2
    assert "wrote 2 synthetic images" in capsys.readouterr().out
