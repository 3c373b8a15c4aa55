-- The C audit trigger and the updated_at trigger.

CREATE ROLE audit_teller LOGIN;
GRANT app_user TO audit_teller;

INSERT INTO operational.loan_products (product_name, product_type, min_amount, max_amount,
	min_tenure_months, max_tenure_months, base_interest_rate)
VALUES ('Audit Product', 'personal', 1000, 100000, 1, 24, 12.00);
INSERT INTO operational.customers (full_name, email, segment, city) VALUES ('Otieno Kamau', 'otieno@x.ke', 'sme', 'Kisumu');

-- INSERT, as the application role (which has no right on audit_log).
SET SESSION AUTHORIZATION audit_teller;
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance, branch_code)
SELECT customer_id, product_id, 50000, 14.5, 12, 'active', 50000, 'KSM-01'
  FROM operational.customers, operational.loan_products;
SELECT count(*) FROM operational.audit_log;   -- app_user cannot read the audit trail
INSERT INTO operational.audit_log (table_name, operation, actor, db_user, txid) VALUES ('loans', 'INSERT', 'x', 'x', 1);
DELETE FROM operational.audit_log;
UPDATE operational.audit_log SET actor = 'someone else';
TRUNCATE operational.audit_log;

-- UPDATE with an actor set for this transaction only (what PgBouncer
-- transaction pooling needs); the next transaction falls back.
BEGIN;
SET LOCAL eds.actor = 'teller.wanjiku';
UPDATE operational.loans SET outstanding_balance = 45000, branch_code = 'KSM-02';
SELECT pg_current_xact_id()::text::bigint AS update_txid \gset
COMMIT;
UPDATE operational.loans SET status = 'defaulted';
RESET SESSION AUTHORIZATION;

SELECT log_id, table_name, operation, record_id, changed_columns, actor, db_user
  FROM operational.audit_log ORDER BY log_id;
SELECT txid = :update_txid AS txid_matches FROM operational.audit_log WHERE actor = 'teller.wanjiku';
SELECT new_values->>'status' AS new_status, old_values->>'status' AS old_status,
	   (new_values->>'outstanding_balance')::numeric AS new_balance,
	   jsonb_typeof(new_values->'amount') AS amount_type,
	   jsonb_typeof(new_values->'disbursed_at') AS null_type
  FROM operational.audit_log WHERE operation = 'UPDATE' ORDER BY log_id;

-- The row images are exactly what to_jsonb() gives for the row.
SELECT a.new_values = to_jsonb(l) AS matches_to_jsonb
  FROM operational.audit_log a JOIN operational.loans l ON l.loan_id::text = a.record_id
 ORDER BY a.log_id DESC LIMIT 1;

-- updated_at was stamped by the BEFORE trigger.
SELECT updated_at > created_at OR updated_at = now() AS stamped FROM operational.loans;

-- DELETE keeps the old row.
DELETE FROM operational.loans;
SELECT operation, new_values IS NULL AS no_new, old_values->>'status' AS old_status, changed_columns
  FROM operational.audit_log ORDER BY log_id DESC LIMIT 1;

-- The trigger on a table of many types: the image matches to_jsonb().
CREATE DOMAIN audit_money AS numeric(12,2) CHECK (VALUE >= 0);
CREATE TYPE audit_pair AS (label text, at date, amounts numeric[]);
CREATE TABLE audit_types (
	id int PRIMARY KEY, b bool, i2 smallint, i8 bigint, n numeric, f4 real, f8 float8,
	d date, ts timestamp, tstz timestamptz, j jsonb, js json, arr int[], txt text, u uuid, iv interval,
	m audit_money, pair audit_pair, grid int[][], tags text[]);
CREATE TRIGGER audit_types_audit AFTER INSERT OR UPDATE OR DELETE ON audit_types
	FOR EACH ROW EXECUTE FUNCTION eds.audit_row();
INSERT INTO audit_types VALUES
	(1, true, 2, 9007199254740993, 12.3400, 0.1, 2.25, '2024-02-29', '2024-02-29 10:00', '2024-02-29 10:00+03',
	 '{"a": [1, 2, {"b": null}]}', '{"x": 1, "x": 2}', '{1,2,3}', 'quote " and \ backslash', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 2 hours',
	 10.5, ROW('first', '2024-01-02', '{1.5,NULL}'), '{{1,2},{3,4}}', '{"a b",NULL,"c\"d"}'),
	(2, NULL, NULL, NULL, 'NaN', 'Infinity', '-Infinity', 'infinity', NULL, NULL, 'null', '[]', '{}', '', NULL, NULL,
	 NULL, ROW(NULL, NULL, NULL), '{}', '{}'),
	(3, false, -1, -1, '-0.001', 'NaN', 1e300, '0044-03-15 BC', '2000-01-01', '-infinity', '"s"', '"s"', NULL, 'ü€', NULL, '-1 mon',
	 0, NULL, '[0:1]={7,8}', '{x}');
SELECT r.id, a.new_values = to_jsonb(r) AS matches
  FROM audit_types r JOIN operational.audit_log a ON a.table_name = 'audit_types' AND a.record_id = r.id::text
 ORDER BY r.id;
UPDATE audit_types SET txt = 'changed', n = n WHERE id = 1;
SELECT changed_columns FROM operational.audit_log WHERE table_name = 'audit_types' AND operation = 'UPDATE';
-- After a column is added the trigger sees the new shape.
ALTER TABLE audit_types ADD COLUMN extra text DEFAULT 'new';
UPDATE audit_types SET extra = 'set' WHERE id = 2;
SELECT a.new_values = to_jsonb(r) AS matches, a.changed_columns
  FROM audit_types r JOIN operational.audit_log a ON a.record_id = r.id::text
 WHERE a.table_name = 'audit_types' AND a.operation = 'UPDATE' AND r.id = 2;
ALTER TABLE audit_types DROP COLUMN b;
UPDATE audit_types SET txt = 'after drop' WHERE id = 3;
SELECT a.new_values = to_jsonb(r) AS matches, a.new_values ? 'b' AS has_dropped
  FROM audit_types r JOIN operational.audit_log a ON a.record_id = r.id::text
 WHERE a.table_name = 'audit_types' AND a.operation = 'UPDATE' AND r.id = 3;

-- Misuse gives clear errors.
CREATE TABLE audit_nokey (x int);
CREATE TRIGGER audit_nokey_audit AFTER INSERT ON audit_nokey FOR EACH ROW EXECUTE FUNCTION eds.audit_row();
INSERT INTO audit_nokey VALUES (1);
CREATE TABLE audit_badarg (x int);
CREATE TRIGGER audit_badarg_audit AFTER INSERT ON audit_badarg FOR EACH ROW EXECUTE FUNCTION eds.audit_row('nope');
INSERT INTO audit_badarg VALUES (1);
CREATE TABLE audit_arg (code text, x int);
CREATE TRIGGER audit_arg_audit AFTER INSERT ON audit_arg FOR EACH ROW EXECUTE FUNCTION eds.audit_row('code');
INSERT INTO audit_arg VALUES ('K-1', 1);
SELECT record_id FROM operational.audit_log WHERE table_name = 'audit_arg';
CREATE TABLE audit_before (id int PRIMARY KEY);
CREATE TRIGGER audit_before_audit BEFORE INSERT ON audit_before FOR EACH ROW EXECUTE FUNCTION eds.audit_row();
INSERT INTO audit_before VALUES (1);
CREATE TRIGGER audit_before_stmt AFTER INSERT ON audit_nokey FOR EACH STATEMENT EXECUTE FUNCTION eds.audit_row();
DROP TRIGGER audit_nokey_audit ON audit_nokey;
INSERT INTO audit_nokey VALUES (1);
CREATE TABLE stamp_missing (id int);
CREATE TRIGGER stamp_missing_trg BEFORE UPDATE ON stamp_missing FOR EACH ROW EXECUTE FUNCTION eds.set_updated_at();
INSERT INTO stamp_missing VALUES (1);
UPDATE stamp_missing SET id = 2;
CREATE TABLE stamp_wrongtype (id int, updated_at date);
CREATE TRIGGER stamp_wrongtype_trg BEFORE UPDATE ON stamp_wrongtype FOR EACH ROW EXECUTE FUNCTION eds.set_updated_at();
INSERT INTO stamp_wrongtype VALUES (1, '2020-01-01');
UPDATE stamp_wrongtype SET id = 2;
DROP TRIGGER stamp_wrongtype_trg ON stamp_wrongtype;
CREATE TRIGGER stamp_after AFTER UPDATE ON stamp_wrongtype FOR EACH ROW EXECUTE FUNCTION eds.set_updated_at('x');
UPDATE stamp_wrongtype SET id = 2;
SELECT eds.audit_row();

-- A failed statement leaves no audit row behind.
SELECT count(*) AS audit_rows_before FROM operational.audit_log \gset
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance)
SELECT customer_id, product_id, 100, 10, 12, 'active', 100 FROM operational.customers, operational.loan_products
UNION ALL SELECT 424242, 1, 100, 10, 12, 'active', 100;
SELECT count(*) = :audit_rows_before AS nothing_left FROM operational.audit_log;

DROP TABLE audit_types, audit_nokey, audit_badarg, audit_arg, audit_before, stamp_missing, stamp_wrongtype;
DROP TYPE audit_pair;
DROP DOMAIN audit_money;
DROP OWNED BY audit_teller;
DROP ROLE audit_teller;
TRUNCATE operational.payments, operational.loans, operational.customers, operational.loan_products, operational.audit_log;
