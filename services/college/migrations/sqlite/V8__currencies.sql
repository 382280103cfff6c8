-- Each account counts its money in one currency, as in
-- migrations/postgres/V10__currencies.sql.
ALTER TABLE accounts ADD COLUMN currency TEXT NOT NULL DEFAULT 'USD'
    CHECK (length(currency) = 3 AND currency = upper(currency));
