"""The web page at ``/`` in a real browser (headless Chromium through Selenium): it reads the model, segments a
chosen image, draws the overlay from the response's RLE, lists the classes present with toggles, offers the
downloads, and asks for the API key when the server has one.

Skipped where Chromium and its driver are not installed (Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"browser tests need {CHROMIUM} and {CHROMEDRIVER}: install chromium and chromium-driver "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)
pytest.importorskip("selenium", reason="browser tests need selenium: pip install selenium")
pytest.importorskip("fastapi", reason="browser tests need seglab[serve]")
uvicorn = pytest.importorskip("uvicorn", reason="browser tests need seglab[serve]")
httpx = pytest.importorskip("httpx", reason="browser tests need httpx")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from seglab.data.palettes import get_label_set  # noqa: E402
from seglab.serve.app import ServeSettings, create_app  # noqa: E402
from seglab.serve.runner import SemanticRunner  # noqa: E402

WAIT_S = 60


class ColourModel(nn.Module):
    """Logits from colour alone, no training: class 1 (VOC aeroplane) where red dominates green, class 2 (bicycle)
    where green dominates red, class 0 (background) elsewhere (on grey)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red_minus_green = x[:, 0:1] - x[:, 1:2]
        return torch.cat([torch.ones_like(red_minus_green), self.gain * red_minus_green,
                          -self.gain * red_minus_green], dim=1)


def demo_image() -> np.ndarray:
    """96 x 128 grey with a red disc and a green rectangle."""
    image = np.full((96, 128, 3), 128, dtype=np.uint8)
    yy, xx = np.mgrid[:96, :128]
    image[(yy - 40) ** 2 + (xx - 36) ** 2 < 22**2] = (220, 20, 20)
    image[55:88, 75:120] = (20, 200, 30)
    return image


@contextmanager
def serving(settings: ServeSettings, runner: SemanticRunner | None = None) -> Iterator[str]:
    """The app on uvicorn in a background thread, on a free port of 127.0.0.1; yields its base URL."""
    runner = runner or SemanticRunner(ColourModel(), "tiny", get_label_set("voc"))
    config = uvicorn.Config(create_app(runner, settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(WAIT_S * 20):
            if server.started or not thread.is_alive():
                break
            thread.join(0.05)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    path = tmp_path / "demo.png"
    Image.fromarray(demo_image()).save(path)
    return path


def wait_state(driver: webdriver.Chrome, state: str) -> None:
    def reached(d: webdriver.Chrome) -> bool:
        current = d.execute_script("return document.body.dataset.state")
        if current == "error" and state != "error":
            raise AssertionError(f"the page shows an error: {d.find_element(By.ID, 'error').text!r}")
        return current == state

    WebDriverWait(driver, WAIT_S).until(reached)


def canvas_pixels(driver: webdriver.Chrome) -> np.ndarray:
    url = driver.execute_script("return document.getElementById('overlay').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def legend_names(driver: webdriver.Chrome) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#legend li .name")]


def test_page_segments_and_draws_overlay(driver, image_path, tmp_path):
    image = demo_image()
    with serving(ServeSettings()) as url:
        expected = httpx.post(f"{url}/v1/segment?outputs=png,rle", content=image_path.read_bytes(),
                              headers={"Content-Type": "image/png"}, timeout=WAIT_S).json()
        colors = np.array(httpx.get(f"{url}/v1/model", timeout=WAIT_S).json()["colors"])
        names = {s["class_id"]: s["name"] for s in expected["segments"]}
        assert sorted(names) == [0, 1, 2]  # the model sees grey, red and green
        label = np.asarray(Image.open(io.BytesIO(base64.b64decode(expected["png"]))))

        driver.get(url)
        wait_state(driver, "ready")
        assert driver.find_element(By.ID, "model-name").text == "tiny"
        assert "semantic" in driver.find_element(By.ID, "model-info").text
        driver.find_element(By.ID, "file").send_keys(str(image_path))
        wait_state(driver, "done")

        assert sorted(legend_names(driver)) == sorted(names.values())
        assert driver.find_element(By.ID, "error").is_displayed() is False

        # the overlay at the default 50%: the image blended with each pixel's class colour (decoded from the RLE)
        drawn = canvas_pixels(driver)
        assert drawn.shape == image.shape
        assert np.abs(drawn - image).max() > 30
        blended = np.round(image * 0.5 + colors[label] * 0.5)
        assert np.abs(drawn - blended).max() <= 1

        # hiding a class shows the plain image under it and changes nothing else
        red = label == 1
        box = driver.find_element(By.XPATH, f"//ul[@id='legend']/li[.//span[@class='name'][.='{names[1]}']]//input")
        box.click()
        hidden = canvas_pixels(driver)
        assert not np.array_equal(hidden, drawn)
        assert np.abs(hidden[red] - image[red]).max() <= 1
        assert np.array_equal(hidden[~red], drawn[~red])
        box.click()
        assert np.array_equal(canvas_pixels(driver), drawn)

        # opacity 0 shows the image itself
        driver.execute_script("const s = document.getElementById('opacity'); s.value = 0;"
                              "s.dispatchEvent(new Event('input'));")
        assert np.abs(canvas_pixels(driver) - image).max() <= 1
        driver.execute_script("const s = document.getElementById('opacity'); s.value = 50;"
                              "s.dispatchEvent(new Event('input'));")

        png_link = driver.find_element(By.ID, "download-png")
        assert png_link.get_attribute("download") == "demo_label.png"
        linked = png_link.get_attribute("href").split(",", 1)[1]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(linked)))), label)
        json_link = driver.find_element(By.ID, "download-json")
        assert json_link.get_attribute("href").startswith("blob:") and json_link.is_displayed()

        shot = tmp_path / "page.png"
        assert driver.save_screenshot(str(shot))
        assert shot.exists() and shot.stat().st_size > 0


def test_page_asks_for_api_key(driver, image_path):
    with serving(ServeSettings(api_key="secret")) as url:
        driver.get(url)
        key = WebDriverWait(driver, WAIT_S).until(ec.visibility_of_element_located((By.ID, "api-key")))
        assert driver.execute_script("return document.body.dataset.state") == "auth"

        key.send_keys("wrong")
        driver.find_element(By.ID, "api-key-submit").click()
        wait_state(driver, "error")
        assert "API key" in driver.find_element(By.ID, "error").text

        key.clear()
        key.send_keys("secret")
        driver.find_element(By.ID, "api-key-submit").click()
        wait_state(driver, "ready")
        assert not driver.find_element(By.ID, "api-key").is_displayed()
        assert driver.find_element(By.ID, "model-name").text == "tiny"

        driver.find_element(By.ID, "file").send_keys(str(image_path))
        wait_state(driver, "done")
        assert sorted(legend_names(driver)) == ["aeroplane", "background", "bicycle"]


def test_page_on_a_demo_scene_with_a_model_folder(driver, tmp_path):
    """A scene of seglab's demo data, served from a model folder as `seglab serve --model DIR` loads it: the legend
    lists exactly the classes the server predicts, in the folder's label set, and the overlay differs from the
    input."""
    import seglab
    from seglab.data.datasets.demo import render_scene
    from seglab.serve.runner import load_runner

    image = render_scene(np.random.default_rng(3), 128)[0]
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    torch.manual_seed(0)
    model = seglab.create_model("unet", num_classes=5, base_width=8).eval()
    folder = seglab.save_pretrained(model, tmp_path / "unet", name="unet",
                                    model_kwargs={"num_classes": 5, "base_width": 8}, label_set="demo_shapes")
    with serving(ServeSettings(), load_runner(folder)) as url:
        expected = httpx.post(f"{url}/v1/segment?outputs=rle", content=path.read_bytes(),
                              headers={"Content-Type": "image/png"}, timeout=WAIT_S).json()
        driver.get(url)
        wait_state(driver, "ready")
        assert driver.find_element(By.ID, "model-name").text == "unet"
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait_state(driver, "done")
        assert sorted(legend_names(driver)) == sorted(s["name"] for s in expected["segments"])
        assert set(legend_names(driver)) <= set(get_label_set("demo_shapes").classes)
        assert np.abs(canvas_pixels(driver) - image).max() > 30
        assert driver.save_screenshot(str(tmp_path / "scene_page.png"))
