-- Each account counts its money in one currency, the awarding agency's
-- (issue 21): the ISO 4217 code beside the minor units. Accounts opened
-- before currencies were USD cents.
ALTER TABLE accounts ADD COLUMN currency text NOT NULL DEFAULT 'USD'
    CHECK (currency ~ '^[A-Z]{3}$');
