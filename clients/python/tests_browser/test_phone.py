"""The portal and the dashboard on a phone: at 390 px (an iPhone's width)
every page fits the screen, nothing scrolls sideways or is cut off, and
the header keeps the researcher's name and "Log out" in view.

Runs before test_portal.py (file order) with researchers of its own, so it
depends on no other test. Each page is loaded in a phone-sized viewport
(Chromium's device emulation, so the page's `viewport` meta tag applies).
"""

import secrets

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from pages import fill, overflow, propose, sign_up, submit, text, wait

PHONE_WIDTH = 390
PHONE_HEIGHT = 844
# A long name: the header must show it whole, beside "Log out".
NAME = "Grace Brewster Murray Hopper"


def as_phone(driver, width=PHONE_WIDTH):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": PHONE_HEIGHT, "deviceScaleFactor": 1, "mobile": True})


def in_view(driver, css):
    """Whether the element is shown whole, inside the screen's width."""
    return driver.execute_script("""
        const e = document.querySelector(arguments[0]);
        if (!e) return "missing";
        const r = e.getBoundingClientRect();
        const width = document.documentElement.clientWidth;
        if (r.width === 0 || r.left < 0 || r.right > width) return [r.left, r.right, width];
        if (e.scrollWidth > e.clientWidth + 1) return "cut off";
        return true;
    """, css)


def check_fits(driver, page):
    found = overflow(driver)
    assert found == {}, f"{page} is wider than a phone: {found}"


def test_every_page_fits_a_phone_with_the_name_and_log_out_in_view(mesh, browsers, shots):
    inviter = browsers()
    sign_up(inviter, mesh.web, "Katherine Johnson", f"kj-{secrets.token_hex(4)}@uni.edu")
    propose(inviter, mesh.web, "nsf", "Orbital mechanics", "3,200.00", days="365")
    inviter.find_element(By.ID, "account-link").click()
    wait(inviter).until(EC.presence_of_element_located((By.ID, "account")))

    b = browsers()
    as_phone(b)
    for path in ("/", "/signup", "/login", "/mesh"):
        b.get(mesh.web + path)
        check_fits(b, path)
    email = f"grace-{secrets.token_hex(4)}@uni.edu"
    sign_up(b, mesh.web, NAME, email)
    for css in ("#who", "#logout"):
        assert in_view(b, css) is True, (css, in_view(b, css))
    assert text(b, "#who") == NAME

    # Pages with a table in them: an account with a transaction, proposals,
    # a pending invitation.
    propose(b, mesh.web, "nsf", "A compiler for everyone, in plain words", "4,000.00", days="365")
    check_fits(b, "a proposal")
    b.find_element(By.ID, "account-link").click()
    wait(b).until(EC.presence_of_element_located((By.ID, "account")))
    submit(b, fill(b, "#withdraw-form", amount="12.50", memo="punched cards"))
    wait(b).until(EC.text_to_be_present_in_element((By.ID, "flash"), "Withdrew USD 12.50"))
    submit(inviter, fill(inviter, "#add-member-form", email=email))
    wait(inviter).until(EC.text_to_be_present_in_element((By.ID, "flash"), "Sent an invitation"))
    wait(b).until(EC.text_to_be_present_in_element((By.ID, "live"), "live"))
    check_fits(b, "/accounts/ID")
    shots(b, "phone-account")
    for path, table in (("/accounts", "#accounts"), ("/proposals", "#proposals"),
                        ("/proposals/new", "#proposal-form"), ("/invitations", "#invitations")):
        b.get(mesh.web + path)
        wait(b).until(EC.presence_of_element_located((By.CSS_SELECTOR, table)))
        check_fits(b, path)
        for css in ("#who", "#logout"):
            assert in_view(b, css) is True, (path, css, in_view(b, css))
    shots(b, "phone-invitations")
    b.get(mesh.web + "/proposals")
    shots(b, "phone-proposals")

    b.get(mesh.web + "/mesh")
    wait(b).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#mesh tr.instance")) >= 4)
    wait(b).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mesh .badge.serving"))
    check_fits(b, "/mesh")
    shots(b, "phone-mesh")


def test_the_header_fits_at_every_phone_width(mesh, browsers):
    b = browsers()
    sign_up(b, mesh.web, NAME, f"grace-{secrets.token_hex(4)}@uni.edu")
    for width in (390, 430, 460, 500):
        as_phone(b, width)
        b.get(mesh.web + "/accounts")
        check_fits(b, f"/accounts at {width} px")
        for css in ("#who", "#logout"):
            assert in_view(b, css) is True, (width, css, in_view(b, css))
