"""The inputs users have, in `TTEProcessor` rows: strings, PIL images, paths, image URLs (a real HTTP server on
127.0.0.1), base64 data URIs, numpy arrays and tensors, `.mp4` files (written here with PyAV), arrays of frames, and
the frame lists and folders of before; each gives exactly the pixels of the equivalent PIL input. Bad inputs name the
row and field."""

from __future__ import annotations

import base64
import functools
import io
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from processing_tte import TTEProcessor

COLOURS = ("red", "blue", "green", "white")


def _image(colour: str = "red", size=(32, 24)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.putpixel((3, 5), (10, 200, 30))  # not symmetric, so a transposed array would differ
    return image


@pytest.fixture(scope="module")
def processor(tiny_qwen2_vl) -> TTEProcessor:
    return TTEProcessor.from_backbone(tiny_qwen2_vl)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder with `red.png` and `broken.png`, served over HTTP on 127.0.0.1; yields the base URL."""
    folder = tmp_path_factory.mktemp("www")
    _image().save(folder / "red.png")
    (folder / "broken.png").write_bytes(b"not an image")
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _pixels(processor, rows, key="pixel_values"):
    return processor.process_queries(rows)[key]


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_every_image_source_gives_the_pixels_of_the_pil_image(processor, served, tmp_path):
    image = _image()
    image.save(tmp_path / "red.png")
    array = np.asarray(image)
    expected = _pixels(processor, [{"image": image, "text": "x"}])
    sources = {
        "path": str(tmp_path / "red.png"),
        "pathlib": tmp_path / "red.png",
        "url": f"{served}/red.png",
        "data-uri": _data_uri(image),
        "numpy-hwc-uint8": array,
        "numpy-chw-uint8": array.transpose(2, 0, 1).copy(),
        "numpy-hwc-float": array.astype(np.float32) / 255,
        "tensor-chw-float": torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255,
        "tensor-hwc-uint8": torch.from_numpy(array.copy()),
    }
    for name, source in sources.items():
        torch.testing.assert_close(_pixels(processor, [{"image": source, "text": "x"}]), expected, atol=0, rtol=0,
                                   msg=name)


def test_rows_that_are_strings_or_images(processor):
    image = _image()
    as_rows = processor.process_queries(["a red square", image])
    as_dicts = processor.process_queries([{"text": "a red square"}, {"image": image}])
    for key in as_dicts:
        torch.testing.assert_close(as_rows[key], as_dicts[key], atol=0, rtol=0, msg=key)
    reasoner = processor.process_reasoner_inputs(["a red square"], "retrieval")
    assert torch.equal(reasoner["input_ids"],
                       processor.process_reasoner_inputs([{"text": "a red square"}], "retrieval")["input_ids"])


def _write_mp4(path, colours=COLOURS, fps=4, size=32):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for colour in colours:
            for packet in stream.encode(av.VideoFrame.from_image(Image.new("RGB", (size, size), colour))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_video_file_is_read_through_transformers_load_video(processor, tmp_path):
    pytest.importorskip("av")
    from transformers.video_utils import load_video

    _write_mp4(tmp_path / "clip.mp4")
    frames = [Image.fromarray(frame) for frame in load_video(str(tmp_path / "clip.mp4"), backend="pyav")[0]]
    assert len(frames) == len(COLOURS)  # 1 s at 4 fps: 2 frames at 2 fps are sampled
    batch = processor.process_queries([{"video": str(tmp_path / "clip.mp4"), "text": "what happens"}])
    expected = processor.process_queries([{"video": [frames[0], frames[3]], "text": "what happens"}])
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw"):
        torch.testing.assert_close(batch[key], expected[key], atol=0, rtol=0, msg=key)


def test_arrays_of_frames_and_frame_lists_and_folders_agree(processor, tmp_path):
    frames = [_image(colour, (32, 32)) for colour in COLOURS]
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        frame.save(folder / f"{index:03d}.png")
    stacked = np.stack([np.asarray(frame) for frame in frames])
    expected = _pixels(processor, [{"video": frames}], "pixel_values_videos")
    for name, source in {"folder": str(folder), "numpy-thwc": stacked,
                         "tensor-tchw": torch.from_numpy(stacked.copy()).permute(0, 3, 1, 2),
                         "list-of-arrays": list(stacked), "list-of-paths": sorted(folder.iterdir())}.items():
        torch.testing.assert_close(_pixels(processor, [{"video": source}], "pixel_values_videos"), expected,
                                   atol=0, rtol=0, msg=name)


def test_bad_inputs_name_the_row_and_field(processor, served, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    cases = [
        ({"image": f"{served}/missing.png"}, ValueError, r"query row 1 field 'image': cannot load image http://"),
        ({"image": f"{served}/broken.png"}, ValueError, r"query row 1 field 'image': cannot load image"),
        ({"image": "data:image/png;base64,AAAA"}, ValueError, r"query row 1 field 'image': cannot load image data:"),
        ({"image": str(tmp_path / "nope.png")}, FileNotFoundError, r"query row 1 field 'image': image file not found"),
        ({"image": np.zeros((4, 4))}, ValueError, r"query row 1 field 'image': an image array must have 3 dim"),
        ({"image": np.full((8, 8, 3), 2.0)}, ValueError, r"query row 1 field 'image': a floating-point image array"),
        ({"image": 3}, ValueError, r"query row 1 field 'image': expected a PIL image, a path, a URL"),
        ({"video": str(tmp_path / "nope.mp4")}, FileNotFoundError, r"query row 1 field 'video': video file not found"),
        ({"video": str(tmp_path / "broken.mp4")}, ValueError, r"query row 1 field 'video': cannot read video"),
        ({"video": np.zeros((8, 8, 3), np.uint8)}, ValueError, r"query row 1 field 'video': a video array must have"),
        ({"video": [_image(), 3]}, ValueError, r"query row 1 field 'video'\[1\]: expected a PIL image"),
        (7, ValueError, r"query row 1: expected a dict, a string or a PIL image, got int"),
        ({"text": 5}, TypeError, r"query row 1 field 'text' must be a string"),
    ]
    for row, error, message in cases:
        with pytest.raises(error, match=message):
            processor.process_queries([{"text": "fine"}, row])
