import io
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from u1lib.data.buckets import BucketSpec
from u1lib.data.pack import pack
from u1lib.data.pixels import load_image_tensor
from u1lib.data.reader import INDEX_COLUMNS, BucketBatchSampler, PackedDataset


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A train.parquet of 40 rows in 3 buckets (64x64, 72x56, 56x72), so 3 row groups."""
    root = tmp_path_factory.mktemp("reader")
    src = root / "src"
    src.mkdir()
    shapes = [(64, 64), (90, 70), (70, 90)]
    for i in range(40):
        Image.new("RGB", shapes[i % 3], (i * 6, 0, 255 - i * 6)).save(src / f"s{i:02d}.png")
        (src / f"s{i:02d}.txt").write_text(f"sample {i}")
    pack(src, root / "out", buckets=BucketSpec("area", 64 * 64, 8))
    return root / "out" / "train.parquet"


def test_dataset_index_and_rows_match_the_file(packed):
    dataset = PackedDataset(packed)
    table = pq.read_table(packed).to_pylist()
    assert len(dataset) == 40 and dataset.sample_ids == [r["sample_id"] for r in table]
    assert dataset.buckets == [r["bucket"] for r in table]
    assert (dataset.widths[1], dataset.heights[1]) == (72, 56)
    for index in (0, 15, 16, 39, 17, 3):
        assert dataset[index] == table[index]
    assert dataset.rows([39, 0, 20]) == [table[39], table[0], table[20]]
    assert dataset.texts()[5] == ("sample 5", None)


def test_dataset_never_reads_the_whole_image_column(packed, monkeypatch):
    reads, group_reads = [], []
    original_read, original_group = pq.ParquetFile.read, pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read",
        lambda self, columns=None, **kw: reads.append(columns) or original_read(self, columns=columns, **kw),
    )
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, i, **kw: group_reads.append(i) or original_group(self, i, **kw)
    )
    dataset = PackedDataset(packed)
    assert reads == [INDEX_COLUMNS]
    dataset.rows([17, 18, 30])
    assert group_reads == [1]
    dataset.rows([2, 35])
    assert group_reads == [1, 0, 2]


def test_dataset_out_of_range_and_wrong_schema(packed, tmp_path):
    with pytest.raises(IndexError, match="row 40 out of range"):
        PackedDataset(packed)[40]
    pq.write_table(pa.table({"sample_id": ["a"], "image": [b"x"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a packed dataset.*missing column 'bucket'"):
        PackedDataset(tmp_path / "other.parquet")


def test_load_image_tensor_maps_0_255_to_minus_1_1():
    image = Image.new("RGB", (3, 2), (0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0))
    image.putpixel((2, 1), (0, 51, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tensor = load_image_tensor(buffer.getvalue())
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == [-1, -1, -1]
    assert tensor[:, 0, 1].tolist() == [1, -1, -1]
    assert tensor[1, 1, 2].item() == pytest.approx(51 / 127.5 - 1)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"


def encoded(fmt: str, size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def plugin_calls(monkeypatch):
    """Formats whose Pillow plugin was asked to open something; only PNG's real plugin stays in place."""
    Image.init()  # register every plugin first, so none is added unwatched later
    calls = []
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt != "PNG":
            monkeypatch.setitem(Image.OPEN, fmt, (lambda *a, fmt=fmt: calls.append(fmt) or 1 / 0, accept))
    return calls


def with_image_cell(packed, tmp_path, row: int, data: bytes | None) -> tuple:
    """A copy of the packed file whose row ``row`` holds ``data`` in its image cell."""
    table = pq.read_table(packed)
    images = table.column("image").to_pylist()
    images[row] = data
    path = tmp_path / "tampered.parquet"
    index = table.schema.get_field_index("image")
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(images, pa.binary())), path)
    return path, table.column("sample_id")[row].as_py()


@pytest.mark.parametrize(
    "data",
    [EPS, encoded("BMP"), encoded("GIF"), encoded("JPEG"), encoded("TIFF"), encoded("WEBP"), encoded("PPM"), b"junk"],
    ids=["eps", "bmp", "gif", "jpeg", "tiff", "webp", "ppm", "junk"],
)
def test_reader_opens_only_png_and_names_file_and_id(packed, tmp_path, plugin_calls, data):
    path, sample_id = with_image_cell(packed, tmp_path, 0, data)
    dataset = PackedDataset(path)
    with pytest.raises(ValueError) as caught:
        dataset.load_batch([0])
    message = str(caught.value)
    assert str(path) in message and repr(sample_id) in message and "re-run pack" in message
    assert "not a PNG" in message
    assert plugin_calls == []
    dataset.load_batch([3])  # the untouched rows still load


def test_reader_refuses_damaged_empty_or_resized_png_cells(packed, tmp_path):
    good = pq.read_table(packed).column("image")[0].as_py()
    cases = {
        "damaged": good[: len(good) // 2],
        "empty": b"",
        "the image is 32x16, its row says": encoded("PNG", (32, 16)),
    }
    for expected, data in cases.items():
        path, sample_id = with_image_cell(packed, tmp_path, 0, data)
        with pytest.raises(ValueError) as caught:
            PackedDataset(path).load_batch([0])
        message = str(caught.value)
        assert expected in message and str(path) in message and repr(sample_id) in message
        assert "re-run pack" in message


def test_load_batch_stacks_one_bucket(packed):
    dataset = PackedDataset(packed)
    ids, images = dataset.load_batch([0, 3, 6])
    assert ids == ["s00", "s03", "s06"] and images.shape == (3, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    with pytest.raises(ValueError, match="one bucket"):
        dataset.load_batch([0, 1])


def fake_dataset():
    """23 items: 10 in bucket A, 7 in B, 6 in C."""
    return SimpleNamespace(buckets=["A"] * 10 + ["B"] * 7 + ["C"] * 6)


def test_every_batch_holds_one_bucket_and_an_epoch_covers_each_item_once():
    data = fake_dataset()
    sampler = BucketBatchSampler(data, batch_size=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 2
    assert sorted(i for batch in batches for i in batch) == list(range(23))
    for batch in batches:
        assert len({data.buckets[i] for i in batch}) == 1


def test_drop_last_keeps_only_full_batches():
    batches = list(BucketBatchSampler(fake_dataset(), batch_size=4, seed=0, drop_last=True))
    assert len(batches) == 2 + 1 + 1 and all(len(b) == 4 for b in batches)


def test_order_depends_on_seed_and_epoch_only():
    first = BucketBatchSampler(fake_dataset(), batch_size=3, seed=5)
    again = BucketBatchSampler(fake_dataset(), batch_size=3, seed=5)
    epoch0, epoch1 = list(first), list(first)
    assert epoch0 == list(again) and epoch1 == list(again)
    assert epoch0 != epoch1
    assert epoch0 != list(BucketBatchSampler(fake_dataset(), batch_size=3, seed=6))


def test_resume_from_state_continues_exactly():
    reference = BucketBatchSampler(fake_dataset(), batch_size=3, seed=1)
    uninterrupted = [batch for _ in range(3) for batch in reference]  # three epochs
    run = BucketBatchSampler(fake_dataset(), batch_size=3, seed=1)
    consumed = []
    for batch in run:
        consumed.append(batch)
        if len(consumed) == 5:
            break
    consumed += list(run)  # the rest of epoch 0
    iterator = iter(run)  # stop inside epoch 1
    consumed += [next(iterator) for _ in range(4)]
    state = run.state_dict()
    assert (state["epoch"], state["position"]) == (1, 4)
    resumed = BucketBatchSampler(fake_dataset(), batch_size=3, seed=1)
    resumed.load_state_dict(state)
    continued = list(resumed) + list(resumed)
    assert consumed + continued == uninterrupted


def test_state_from_other_settings_is_refused():
    state = BucketBatchSampler(fake_dataset(), batch_size=3, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed 1 \\(now 2\\)"):
        BucketBatchSampler(fake_dataset(), batch_size=3, seed=2).load_state_dict(state)


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="lower batch_size"):
        BucketBatchSampler(fake_dataset(), batch_size=11, seed=0, drop_last=True)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(fake_dataset(), batch_size=0, seed=0)


def test_peek_announces_the_next_batch_across_epochs():
    sampler = BucketBatchSampler(fake_dataset(), batch_size=2, seed=3)
    for _ in range(3 * len(sampler)):
        announced = sampler.peek()
        batch = next(iter(sampler))
        assert batch == announced


def test_prefetcher_gives_the_batch_asked_for(packed):
    from u1lib.train.prefetch import BatchPrefetcher

    dataset = PackedDataset(packed)
    loader = BatchPrefetcher(dataset, pin_memory=False)
    loader.prefetch([0])
    ids, images = loader.load([1])  # a different batch than announced: loaded on demand
    assert ids == [dataset.sample_ids[1]]
    loader.prefetch([0])
    ids, prefetched = loader.load([0])
    assert ids == [dataset.sample_ids[0]] and torch.equal(prefetched, dataset.load_batch([0])[1])
