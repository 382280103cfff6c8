"""What the browser tests share: bounded waits, filling and sending the
portal's forms, and the checks of a page's layout."""

import os
import pathlib
import sys

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import grantmesh_client as gc  # noqa: E402

# Generous bounds for page loads and mesh changes on a busy machine.
WAIT = 15.0
PASSWORD = "correct horse battery"


def wait(driver, timeout=WAIT):
    # Live pages re-render parts of themselves (the dashboard every second):
    # an element read mid-update is stale, and the next poll reads it again.
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,))


def text(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).text


def fill(driver, form_css, **fields):
    form = driver.find_element(By.CSS_SELECTOR, form_css)
    for name, value in fields.items():
        box = form.find_element(By.NAME, name)
        if box.tag_name == "select":
            Select(box).select_by_value(value)
        else:
            box.clear()
            box.send_keys(value)
    return form


def submit(driver, form):
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def sign_up(driver, web, name, email, code_from_page=False):
    """Signs up on the portal and finishes on its verification page with the
    code the college mailed: read from the outbox, or (``code_from_page``)
    from the portal's /dev/mail page, as a person at a dev mesh would."""
    driver.get(web + "/signup")
    form = fill(driver, "#signup-form", name=name, email=email, password=PASSWORD)
    submit(driver, form)
    wait(driver).until(EC.url_contains("/verify?email="))
    if code_from_page:
        verify = driver.current_url
        wait(driver).until(lambda d: mailed_code_on_page(d, web, email))
        code = mailed_code_on_page(driver, web, email)
        driver.get(verify)
    else:
        code = gc.mailed_code(os.environ["GRANTMESH_MAIL_OUTBOX"], email)
    form = fill(driver, "#verify-form", code=code, password=PASSWORD)
    submit(driver, form)
    wait(driver).until(EC.url_to_be(web + "/accounts"))


def mailed_code_on_page(driver, web, email):
    """The code of the newest message to ``email`` on /dev/mail, if any."""
    driver.get(web + "/dev/mail")
    for letter in driver.find_elements(By.CSS_SELECTOR, "article.mail"):
        to = letter.find_element(By.CSS_SELECTOR, ".mail-to").text
        codes = letter.find_elements(By.CSS_SELECTOR, ".mail-code")
        if to == email.lower() and codes:
            return codes[0].text
    return None


def log_in(driver, web, email):
    driver.get(web + "/login")
    form = fill(driver, "#login-form", email=email, password=PASSWORD)
    submit(driver, form)
    wait(driver).until(EC.url_to_be(web + "/accounts"))


def propose(driver, web, agency, title, amount, days="30"):
    driver.get(web + "/proposals/new")
    form = fill(driver, "#proposal-form", agency=agency, title=title, amount=amount, days=days)
    submit(driver, form)
    wait(driver).until(EC.presence_of_element_located((By.ID, "decision")))


# Cells whose text takes more than one line (an id or "3.0 s" broken in
# two); a cell of class `wraps` (the labels) may take several.
WRAPPED_CELLS = """
return [...document.querySelectorAll(arguments[0])].filter((cell) => {
  if (cell.classList.contains("wraps") || cell.offsetParent === null) return false;
  const range = document.createRange();
  range.selectNodeContents(cell);
  const height = range.getBoundingClientRect().height;
  const line = parseFloat(getComputedStyle(cell).lineHeight) || 24;
  return height > line * 1.5;
}).map((cell) => cell.textContent.trim());
"""

# What makes a page wider than the screen: the page's scroll width, and the
# elements reaching past either edge (cut off when an ancestor clips them).
OVERFLOW = """
const width = document.documentElement.clientWidth;
const outside = [...document.querySelectorAll("body *")].filter((e) => {
  const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && (r.right > width + 1 || r.left < -1);
}).slice(0, 8).map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
  + (e.className && typeof e.className === "string" ? "." + e.className.replace(/ /g, ".") : "")
  + " " + JSON.stringify((e.textContent || "").trim().slice(0, 40)));
return {scroll: document.documentElement.scrollWidth, width: width, outside: outside};
"""


def overflow(driver):
    """What sticks out of the screen sideways ({} when nothing does)."""
    found = driver.execute_script(OVERFLOW)
    if found["scroll"] <= found["width"] and not found["outside"]:
        return {}
    return found
