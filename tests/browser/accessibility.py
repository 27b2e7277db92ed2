"""What the browser tests check on every page: WCAG contrast and the basic accessibility rules."""
from __future__ import annotations

import re
from typing import Any

from selenium.webdriver.common.by import By


def _luminance(rgb: tuple[float, ...]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS colours (`rgb(...)`/`rgba(...)` or `#rrggbb`)."""
    def parse(colour: str) -> tuple[float, ...]:
        if colour.startswith("#"):
            return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return tuple(float(x) for x in re.findall(r"[\d.]+", colour)[:3])
    la, lb = sorted((_luminance(parse(a)), _luminance(parse(b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def accessibility_problems(driver: Any) -> list[str]:
    """One h1, heading levels never skipping, names on every img/svg, labelled controls."""
    problems = []
    levels = [int(h.tag_name[1]) for h in driver.find_elements(
        By.CSS_SELECTOR, "h1, h2, h3, h4, h5, h6")]
    if levels.count(1) != 1 or levels[0] != 1:
        problems.append(f"headings {levels}: one h1 first")
    problems += [f"heading skips {a} -> {b}" for a, b in zip(levels, levels[1:]) if b > a + 1]
    for img in driver.find_elements(By.TAG_NAME, "img"):
        if not img.get_attribute("alt"):
            problems.append(f"img without alt: {img.get_attribute('src')}")
    for svg in driver.find_elements(By.TAG_NAME, "svg"):
        if not (svg.get_attribute("aria-label")
                or svg.find_elements(By.XPATH, "./*[local-name()='title']")):
            problems.append("svg without a title or aria-label")
    # A hidden input (the asset page's chosen scale) is no control a person sees or uses.
    for control in driver.find_elements(By.CSS_SELECTOR,
                                        "input:not([type=hidden]), select, textarea"):
        ident = control.get_attribute("id")
        labelled = (control.get_attribute("aria-label")
                    or (ident and driver.find_elements(By.CSS_SELECTOR, f'label[for="{ident}"]'))
                    or control.find_elements(By.XPATH, "ancestor::label"))
        if not labelled:
            problems.append(f"unlabelled control {control.get_attribute('name')}")
    return problems
