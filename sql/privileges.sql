-- Least privilege: what each group role can and cannot do.

-- The first write in a fresh session, by the application role: the change
-- capture and audit triggers write where the role itself has no rights.
CREATE ROLE priv_teller LOGIN IN ROLE app_user;
SET SESSION AUTHORIZATION priv_teller;
INSERT INTO operational.customers (full_name, email) VALUES ('First Write', 'first@x.ke');
SELECT count(*) FROM eds.change_log;
RESET SESSION AUTHORIZATION;
SELECT table_name, op FROM eds.change_log ORDER BY event_id DESC LIMIT 1;
DELETE FROM operational.customers WHERE email = 'first@x.ke';
TRUNCATE eds.change_log;
DROP ROLE priv_teller;

SELECT r.rolname, t.tbl, p.priv, has_table_privilege(r.rolname, t.tbl, p.priv) AS granted
  FROM (VALUES ('app_user'), ('readonly_user'), ('etl_reader')) AS r(rolname),
	   (VALUES ('operational.customers'), ('operational.loan_products'), ('operational.loans'),
			   ('operational.payments'), ('operational.audit_log'),
			   ('operational.vw_active_loans'), ('operational.vw_customer_payment_summary')) AS t(tbl),
	   (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')) AS p(priv)
 WHERE has_table_privilege(r.rolname, t.tbl, p.priv)
 ORDER BY 1, 2, 3;

-- PUBLIC gets nothing on the operational tables.
CREATE ROLE priv_nobody LOGIN;
SELECT t.tbl, has_table_privilege('priv_nobody', t.tbl, 'SELECT') AS can_select
  FROM (VALUES ('operational.customers'), ('operational.loans'), ('operational.payments'),
			   ('operational.audit_log')) AS t(tbl);

-- Functions: post_payment for the app; the generator and triggers for nobody.
SELECT r.rolname, f.fn, has_function_privilege(r.rolname, f.fn, 'EXECUTE') AS can_execute
  FROM (VALUES ('app_user'), ('readonly_user'), ('etl_reader'), ('priv_nobody')) AS r(rolname),
	   (VALUES ('operational.post_payment(bigint,numeric,text,numeric,text,timestamptz)'),
			   ('eds_generate_demo_data(integer,integer,integer,integer)'),
			   ('eds.audit_row()'), ('eds.set_updated_at()')) AS f(fn)
 ORDER BY 1, 2;

-- The group roles cannot log in; the internal schema is closed.
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb
  FROM pg_roles WHERE rolname IN ('app_user', 'readonly_user', 'etl_reader') ORDER BY 1;
SELECT has_schema_privilege('priv_nobody', 'eds', 'USAGE') AS eds_schema_usage,
	   has_schema_privilege('app_user', 'operational', 'CREATE') AS app_can_create;

-- Acting as each role.
CREATE ROLE priv_reader LOGIN IN ROLE readonly_user;
CREATE ROLE priv_etl LOGIN IN ROLE etl_reader;
SET SESSION AUTHORIZATION priv_reader;
SELECT count(*) FROM operational.vw_active_loans;
INSERT INTO operational.customers (full_name, email) VALUES ('Sneaky', 'sneaky@x.ke');
SELECT count(*) FROM operational.audit_log;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION priv_etl;
SELECT count(*) FROM operational.audit_log;
UPDATE operational.loans SET status = 'repaid';
SELECT * FROM eds_generate_demo_data();
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION priv_nobody;
SELECT count(*) FROM operational.customers;
SELECT * FROM operational.post_payment(1, 1, 'cash');
SET eds.allow_drop_with_data = on;
RESET SESSION AUTHORIZATION;

-- Every SECURITY DEFINER or PL/pgSQL function of eds pins its search_path,
-- so a same-named object in public cannot capture its calls.
SELECT count(*) AS pinned_functions
  FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'eds'
 WHERE EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c = 'search_path=pg_catalog, pg_temp');
SELECT p.oid::regprocedure AS function_without_pinned_search_path
  FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'eds'
 WHERE (p.prosecdef OR p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql'))
   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c = 'search_path=pg_catalog, pg_temp');

DROP ROLE priv_nobody, priv_reader, priv_etl;
