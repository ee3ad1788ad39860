"""Draw docs/figures/serve-page.png: the serve page in headless chromium after one image.

    python docs/serve_screenshot.py RUN IMAGE [--out docs/figures/serve-page.png]

Starts ``densenets serve RUN`` on a free loopback port, opens ``/``, chooses IMAGE, waits for
the heat map and saves a screenshot (needs chromium, chromium-driver and selenium).
"""

import argparse
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("image")
    parser.add_argument("--out", default="docs/figures/serve-page.png")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "densenets", "serve", args.run, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1150"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 120)
            wait.until(lambda d: d.find_element(By.ID, "model-name").text not in ("", "…"))
            driver.find_element(By.ID, "files").send_keys(args.image)
            wait.until(lambda d: d.execute_script(
                "const i = document.querySelector('.heatmap'); return i && i.complete && i.naturalWidth"))  # fmt: skip
            driver.save_screenshot(args.out)
            print(f"wrote {args.out}")
        finally:
            driver.quit()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
