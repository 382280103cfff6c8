"""The researcher portal and the mesh dashboard, driven in headless Chromium.

The tests run in file order against one mesh (see conftest.py) and build on
each other: Ada signs up and gets an account, a second browser follows it
live, Bob is refused it, and last a College is killed under the dashboard.
Screenshots of the key pages go to the screenshot directory (conftest.py):
an ignored one unless scripts/screenshots asks for docs/screenshots/.
"""

import re
import secrets
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from pages import PASSWORD, WRAPPED_CELLS, fill, log_in, propose, sign_up, submit, text, wait

# The bar: a withdrawal in one browser shows in another within a second.
LIVE_WITHIN = 1.0
# A time as every page writes it.
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


class Ctx:
    """What earlier tests made, for later ones."""
    ada_email = f"ada-{secrets.token_hex(4)}@uni.edu"
    bob_email = f"bob-{secrets.token_hex(4)}@uni.edu"
    account_id = None


def test_a_researcher_signs_up_logs_out_and_logs_in_again(mesh, browsers, shots):
    b = browsers()
    b.get(mesh.web + "/")
    shots(b, "home")
    sign_up(b, mesh.web, "Ada Lovelace", Ctx.ada_email, code_from_page=True)
    assert text(b, "#who") == "Ada Lovelace"
    assert "verified" in text(b, "#flash")
    cookie = b.get_cookie("grantmesh_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    b.find_element(By.ID, "logout").click()
    wait(b).until(EC.presence_of_element_located((By.LINK_TEXT, "Log in")))
    b.get(mesh.web + "/login")
    form = fill(b, "#login-form", email=Ctx.ada_email, password="wrong password!")
    submit(b, form)
    assert "do not match" in wait(b).until(EC.presence_of_element_located((By.ID, "error"))).text
    shots(b, "login-refused")
    log_in(b, mesh.web, Ctx.ada_email)
    assert text(b, "#who") == "Ada Lovelace"


def strength(driver):
    return text(driver, "#password-strength")


def test_the_sign_up_form_states_the_password_rule_and_shows_the_strength_as_one_types(
        mesh, browsers, shots):
    b = browsers()
    b.get(mesh.web + "/signup")
    form = b.find_element(By.ID, "signup-form")
    # The College's rule (services/auth/src/strength.rs), not a made-up one.
    assert "10 to 256 characters" in form.text and "3 of 4" in form.text, form.text
    box = form.find_element(By.NAME, "password")
    assert (box.get_attribute("minlength"), box.get_attribute("maxlength")) == ("10", "256")
    fill(b, "#signup-form", name="Adalinda Lovelace", email=f"adalinda-{secrets.token_hex(3)}@uni.edu")
    box.send_keys("short")
    wait(b).until(lambda d: "10 to 256" in strength(d))
    box.clear()
    box.send_keys("password1234")
    wait(b).until(lambda d: "too easy to guess" in strength(d))
    assert re.search(r"strength [0-2] of 4", strength(b)), strength(b)
    box.clear()
    box.send_keys(PASSWORD)
    wait(b).until(lambda d: "Strong enough" in strength(d))
    shots(b, "signup-strength")
    # The researcher's own name counts against a password, as at the
    # College; and the hint and the College agree: what the hint calls too
    # easy, the College refuses.
    box.clear()
    box.send_keys("adalinda2024")
    wait(b).until(lambda d: "too easy to guess" in strength(d))
    submit(b, form)
    error = wait(b).until(EC.presence_of_element_located((By.ID, "error"))).text
    assert "too easy to guess" in error, error


def test_a_proposal_outside_the_agencys_band_is_rejected_with_its_reason(mesh, browsers, shots):
    b = browsers()
    log_in(b, mesh.web, Ctx.ada_email)
    # erc awards 1,000.00–2,500.00; ask for far more.
    propose(b, mesh.web, "erc", "Telescope time", "90,000.00")
    decision = text(b, "#decision")
    assert "Rejected" in decision
    # A refusal reads as one: not in the green banner of a success.
    assert b.find_element(By.ID, "flash").get_attribute("class") == "error", text(b, "#flash")
    # The reason in amounts as the researcher typed them, not minor units.
    reason = text(b, "#reason")
    assert "90,000.00" in reason and "1,000.00" in reason and "2,500.00" in reason, reason
    assert "9000000" not in reason, reason
    assert b.find_elements(By.ID, "account-link") == []
    shots(b, "proposal-rejected")


def test_an_accepted_proposal_opens_an_account_shown_at_once(mesh, browsers, shots):
    b = browsers()
    log_in(b, mesh.web, Ctx.ada_email)
    b.get(mesh.web + "/proposals/new")
    shots(b, "proposal-form")
    propose(b, mesh.web, "nsf", "Protein folding", "4,000.00", days="365")
    assert "Accepted" in text(b, "#decision")
    shots(b, "proposal-accepted")
    b.find_element(By.ID, "account-link").click()
    wait(b).until(EC.presence_of_element_located((By.ID, "account")))
    Ctx.account_id = b.find_element(By.ID, "account").get_attribute("data-account")
    assert text(b, "#balance") == "USD 4,000.00"
    assert text(b, "#state") == "open"
    wait(b).until(EC.text_to_be_present_in_element((By.ID, "countdown"), "left"))
    b.get(mesh.web + "/proposals")
    rows = b.find_elements(By.CSS_SELECTOR, "#proposals tbody tr")
    assert len(rows) == 2, "the accepted and the rejected proposal"
    shots(b, "proposals")


def test_a_withdrawal_in_one_browser_shows_in_another_within_a_second(mesh, browsers, shots):
    assert Ctx.account_id, "needs the account of the previous test"
    page = f"{mesh.web}/accounts/{Ctx.account_id}"
    a, watcher = browsers(), browsers()
    for b in (a, watcher):
        log_in(b, mesh.web, Ctx.ada_email)
        b.get(page)
    wait(watcher).until(EC.text_to_be_present_in_element((By.ID, "live"), "live"))
    before = text(watcher, "#balance")
    url_before = watcher.current_url

    form = fill(a, "#withdraw-form", amount="25.50", memo="reagents")
    submit(a, form)
    wait(a).until(EC.text_to_be_present_in_element((By.ID, "flash"), "Withdrew USD 25.50"))
    applied = time.monotonic()
    wait(watcher, LIVE_WITHIN).until(
        EC.text_to_be_present_in_element((By.ID, "balance"), "USD 3,974.50"))
    seen = time.monotonic() - applied
    print(f"the second browser saw the withdrawal {seen * 1000:.0f} ms after the first one's page")
    assert before == "USD 4,000.00"
    assert watcher.current_url == url_before, "no reload"
    assert "reagents" in text(watcher, "#transactions-body")
    shots(watcher, "account-live")


def test_a_double_submitted_withdraw_form_withdraws_once(mesh, browsers):
    assert Ctx.account_id
    b = browsers()
    log_in(b, mesh.web, Ctx.ada_email)
    b.get(f"{mesh.web}/accounts/{Ctx.account_id}")
    balance = text(b, "#balance")
    # The same rendered form (same idempotency key) posted twice, as a double click would.
    statuses = b.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const form = document.getElementById("withdraw-form");
        form.amount.value = "10.00"; form.memo.value = "twice";
        const send = () => fetch(form.action, {method: "POST", body: new URLSearchParams(new FormData(form))}).then(r => r.status);
        Promise.all([send(), send()]).then(done, (e) => done(String(e)));
    """)
    assert statuses == [200, 200], statuses
    b.get(f"{mesh.web}/accounts/{Ctx.account_id}")
    assert balance == "USD 3,974.50"
    assert text(b, "#balance") == "USD 3,964.50"
    memos = [r.text for r in b.find_elements(By.CSS_SELECTOR, "#transactions-body tr") if "twice" in r.text]
    assert len(memos) == 1, memos


def test_refusals_are_said_in_a_researchers_words_without_internal_field_names(mesh, browsers):
    assert Ctx.account_id
    b = browsers()
    log_in(b, mesh.web, Ctx.ada_email)
    b.get(mesh.web + "/proposals/new")
    submit(b, fill(b, "#proposal-form", agency="nsf", title="Nothing", amount="0", days="30"))
    error = wait(b).until(EC.presence_of_element_located((By.ID, "error"))).text
    assert "amount" in error.lower() and "_" not in error, error
    b.get(f"{mesh.web}/accounts/{Ctx.account_id}")
    submit(b, fill(b, "#withdraw-form", amount="0", memo="nothing"))
    flash = wait(b).until(EC.presence_of_element_located((By.ID, "flash")))
    assert flash.get_attribute("class") == "error", flash.text
    assert "Nothing was withdrawn" in flash.text and "_" not in flash.text, flash.text


def test_an_account_page_shows_its_expiry_live(mesh, browsers, shots):
    b = browsers()
    log_in(b, mesh.web, Ctx.ada_email)
    # Days last a second in this mesh: a 3-day account expires as we watch.
    propose(b, mesh.web, "nsf", "Short project", "3,500.00", days="3")
    b.find_element(By.ID, "account-link").click()
    wait(b).until(EC.text_to_be_present_in_element((By.ID, "live"), "live"))
    page = b.current_url
    wait(b).until(EC.text_to_be_present_in_element((By.ID, "state"), "expired"))
    assert b.find_element(By.ID, "withdraw").get_attribute("disabled") is not None
    assert b.current_url == page, "no reload"
    b.get(mesh.web + "/accounts")
    assert len(b.find_elements(By.CSS_SELECTOR, "#accounts tbody tr")) == 2
    shots(b, "accounts")


def test_another_researcher_can_neither_open_nor_follow_the_account(mesh, browsers, shots):
    assert Ctx.account_id
    bob = browsers()
    sign_up(bob, mesh.web, "Bob Builder", Ctx.bob_email)
    bob.get(f"{mesh.web}/accounts/{Ctx.account_id}")
    error = wait(bob).until(EC.presence_of_element_located((By.ID, "error"))).text
    assert "not allowed" in error or "could not find" in error, error
    assert bob.find_elements(By.ID, "balance") == []
    shots(bob, "account-refused")
    status = bob.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("/accounts/" + arguments[0] + "/events").then(async r => done([r.status, r.headers.get("content-type"), await r.text()]), e => done(String(e)));
    """, Ctx.account_id)
    assert status[0] in (403, 404), status
    assert "event-stream" not in (status[1] or "")
    # A form posted without the session's CSRF token is refused.
    refused = bob.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("/accounts/" + arguments[0] + "/withdraw", {method: "POST",
          headers: {"content-type": "application/x-www-form-urlencoded"},
          body: "amount=1&key=abc&csrf=forged"}).then(r => done(r.status), e => done(String(e)));
    """, Ctx.account_id)
    assert refused == 403
    # Ada invites Bob (adding a member is an invitation): until he accepts,
    # the account stays closed to him.
    ada = browsers()
    log_in(ada, mesh.web, Ctx.ada_email)
    ada.get(f"{mesh.web}/accounts/{Ctx.account_id}")
    form = fill(ada, "#add-member-form", email=Ctx.bob_email)
    submit(ada, form)
    wait(ada).until(EC.text_to_be_present_in_element((By.ID, "flash"), "Sent an invitation"))
    assert Ctx.bob_email in text(ada, "#invited"), "the principal investigator sees it pending"
    ada.execute_script("window.notReloaded = true")
    bob.get(f"{mesh.web}/accounts/{Ctx.account_id}")
    assert wait(bob).until(EC.presence_of_element_located((By.ID, "error"))).text
    # Bob accepts in his browser, on his invitations page.
    bob.find_element(By.ID, "invitations-link").click()
    row = wait(bob).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, "#invitations tbody tr")))
    assert "Protein folding" in row.text and "Ada Lovelace" in row.text, row.text
    shots(bob, "invitations")
    # A forged answer (no CSRF token) is refused like any other form.
    forged = bob.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("/invitations/" + arguments[0] + "/accept", {method: "POST",
          headers: {"content-type": "application/x-www-form-urlencoded"},
          body: "csrf=forged"}).then(r => done(r.status), e => done(String(e)));
    """, row.get_attribute("data-invitation"))
    assert forged == 403
    row.find_element(By.CSS_SELECTOR, "button.accept").click()
    wait(bob).until(EC.url_to_be(f"{mesh.web}/accounts/{Ctx.account_id}"))
    assert "You joined" in text(bob, "#flash")
    wait(bob).until(EC.presence_of_element_located((By.ID, "balance")))
    bob.get(mesh.web + "/invitations")
    assert bob.find_elements(By.ID, "no-invitations"), "the answered invitation is gone"
    # Ada's page, left open, follows: Bob is a member and no longer invited.
    wait(ada).until(lambda d: "Bob Builder" in text(d, "#members"))
    wait(ada).until(lambda d: not d.find_elements(By.ID, "invited")
                    or Ctx.bob_email not in d.find_element(By.ID, "invited").text)
    assert ada.execute_script("return window.notReloaded") is True, "no reload"


def test_a_member_removed_by_the_principal_investigator_disappears_live_and_loses_access(
        mesh, browsers, shots):
    assert Ctx.account_id
    page = f"{mesh.web}/accounts/{Ctx.account_id}"
    ada, watcher, bob = browsers(), browsers(), browsers()
    for b, email in ((ada, Ctx.ada_email), (watcher, Ctx.ada_email), (bob, Ctx.bob_email)):
        log_in(b, mesh.web, email)
        b.get(page)
    assert bob.find_elements(By.ID, "add-member-form") == [], "only the principal investigator manages members"
    wait(watcher).until(EC.text_to_be_present_in_element((By.ID, "live"), "live"))
    assert "Bob Builder" in text(watcher, "#members")
    shots(ada, "account-members")
    ada.find_element(By.CSS_SELECTOR, '#members form[action$="/remove"] button').click()
    wait(ada).until(EC.text_to_be_present_in_element((By.ID, "flash"), "Removed"))
    wait(watcher).until(lambda d: "Bob Builder" not in text(d, "#members"))
    bob.get(page)
    assert wait(bob).until(EC.presence_of_element_located((By.ID, "error"))).text


def test_a_fresh_dashboard_says_there_are_no_removals_yet(mesh, browsers):
    # A web role started now has seen no removal (the one that started
    # with the mesh saw test_metrics stop a College).
    port = mesh.spawn_web("web-fresh")
    try:
        b = browsers()
        b.get(f"http://127.0.0.1:{port}/mesh")
        wait(b).until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-service="college"] tr.instance'))
        assert text(b, "#removals") == "None yet.", text(b, "#removals")
    finally:
        mesh.terminate("web-fresh")


def test_the_dashboard_lists_registry_replicas_and_fits_its_columns(mesh, browsers, shots):
    b = browsers()
    # A laptop-sized window: the instance tables must fit it without
    # breaking an id or a duration over two lines.
    b.set_window_size(1024, 900)
    b.get(mesh.web + "/mesh")
    instances = "#mesh tr.instance"
    wait(b).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, instances)) == 4)
    # The table is redrawn every second: the row's text is read inside the
    # wait, which reads it again if the row was replaced meanwhile.
    replica = wait(b).until(lambda d: next(
        (e.text for e in d.find_elements(By.CSS_SELECTOR, "#replicas tr[data-replica]")
         if e.find_element(By.CSS_SELECTOR, ".badge").text == "serving"), False))
    assert mesh.registry in replica, replica
    assert len(b.find_elements(By.CSS_SELECTOR, "#replicas tr[data-replica]")) == 1
    wrapped = b.execute_script(WRAPPED_CELLS, "#mesh td, #replicas td")
    assert wrapped == [], wrapped
    # Nothing calls the erc agency now but the dashboard's own health
    # probes, and those are not requests.
    erc = '[data-instance="agency-erc"] td:last-child'
    wait(b).until(lambda d: text(d, erc) == "0.0 req/s")
    time.sleep(2.5)
    assert text(b, erc) == "0.0 req/s"


def test_the_dashboard_shows_a_killed_college_disappear(mesh, browsers, shots):
    b = browsers()
    b.get(mesh.web + "/mesh")
    college = '[data-service="college"] tr.instance'
    wait(b).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, college)) == 2)
    wait(b).until(lambda d: all(
        "serving" == e.text for e in d.find_elements(By.CSS_SELECTOR, college + " .badge")))
    shots(b, "mesh")
    mesh.kill("college-2")
    wait(b).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, college)) == 1)
    assert b.find_elements(By.CSS_SELECTOR, '[data-instance="college-2"]') == []
    # Read inside the wait: the list re-renders, so a found element may be
    # stale by the time its text is asked for.
    removal = wait(b).until(lambda d: next(
        (e.text for e in d.find_elements(By.CSS_SELECTOR, '#removals [data-removed="college-2"]')),
        False))
    assert "removed:" in removal, removal
    assert UTC_TIME.search(removal), f"the time in UTC like the rest: {removal}"
    shots(b, "mesh-college-killed")
    # The removal is the web role's, not the page's: a reload keeps it.
    b.refresh()
    wait(b).until(lambda d: d.find_elements(By.CSS_SELECTOR, college))
    wait(b).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#removals [data-removed="college-2"]'))
