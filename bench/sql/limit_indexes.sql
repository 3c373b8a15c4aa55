-- bench/sql/limit_indexes.sql: the limit's index builds (see limit_schema.sql).
ALTER TABLE lim.customers ADD PRIMARY KEY (customer_id);
CREATE UNIQUE INDEX ON lim.customers (customer_id, created_at);
CREATE INDEX ON lim.customers (email);
ALTER TABLE lim.loans ADD PRIMARY KEY (loan_id);
CREATE INDEX ON lim.loans (customer_id);
ALTER TABLE lim.payments ADD PRIMARY KEY (payment_id);
CREATE INDEX ON lim.payments (loan_id);
CREATE INDEX ON lim.payments (payment_date);
