-- bench/sql/guide_audit_trigger.sql: the guide's audit trigger on loans,
-- "records old and new values as JSON on every loan change", written the way
-- such PL/pgSQL triggers usually are (to_jsonb of OLD and NEW, one insert).
-- It writes the same audit_log columns eds's C trigger fills, so the two
-- are compared on the same work.  The benchmark creates it disabled.
CREATE OR REPLACE FUNCTION public.bench_guide_audit_loans() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN
		INSERT INTO operational.audit_log (table_name, operation, record_id, old_values, new_values,
										   actor, db_user, txid)
		VALUES (TG_TABLE_NAME, TG_OP, OLD.loan_id::text, to_jsonb(OLD), NULL,
				current_user, session_user, txid_current());
		RETURN OLD;
	ELSIF TG_OP = 'UPDATE' THEN
		INSERT INTO operational.audit_log (table_name, operation, record_id, old_values, new_values,
										   actor, db_user, txid)
		VALUES (TG_TABLE_NAME, TG_OP, NEW.loan_id::text, to_jsonb(OLD), to_jsonb(NEW),
				current_user, session_user, txid_current());
		RETURN NEW;
	ELSE
		INSERT INTO operational.audit_log (table_name, operation, record_id, old_values, new_values,
										   actor, db_user, txid)
		VALUES (TG_TABLE_NAME, TG_OP, NEW.loan_id::text, NULL, to_jsonb(NEW),
				current_user, session_user, txid_current());
		RETURN NEW;
	END IF;
END
$$;
DROP TRIGGER IF EXISTS loans_guide_audit ON operational.loans;
CREATE TRIGGER loans_guide_audit AFTER INSERT OR UPDATE OR DELETE ON operational.loans
	FOR EACH ROW EXECUTE FUNCTION public.bench_guide_audit_loans();
ALTER TABLE operational.loans DISABLE TRIGGER loans_guide_audit;
