// What a BI tool (Metabase) sees through the PostgreSQL JDBC driver when it
// connects as a member of warehouse_reader: the warehouse relations with
// their comments, their columns with comments, nothing it cannot read, and
// every dashboard card's query answering.  Prints one "ok"/"not ok" line
// per check; the TAP test t/006_jdbc.pl counts them.
//
// Usage: java -cp postgresql.jar WarehouseCatalog.java URL USER PASSWORD CARDS.sql

import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

public class WarehouseCatalog {
    private static int failures = 0;

    private static void check(boolean ok, String what) {
        System.out.println((ok ? "ok - " : "not ok - ") + what);
        if (!ok) failures++;
    }

    // Cards as "-- card: name" followed by one SQL statement.
    private static Map<String, String> readCards(Path file) throws Exception {
        Map<String, String> cards = new LinkedHashMap<>();
        String name = null;
        StringBuilder sql = new StringBuilder();
        for (String line : Files.readAllLines(file)) {
            if (line.startsWith("-- card:")) {
                if (name != null) cards.put(name, sql.toString().trim());
                name = line.substring("-- card:".length()).trim();
                sql.setLength(0);
            } else if (name != null && !line.startsWith("--")) {
                sql.append(line).append('\n');
            }
        }
        if (name != null) cards.put(name, sql.toString().trim());
        return cards;
    }

    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2];
        Map<String, String> cards = readCards(Path.of(args[3]));

        try (Connection conn = DriverManager.getConnection(url, user, password)) {
            DatabaseMetaData meta = conn.getMetaData();

            // Relations in the warehouse schema, with their comments.
            Set<String> relations = new TreeSet<>();
            List<String> uncommented = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, "warehouse", "%",
                    new String[] {"TABLE", "VIEW", "PARTITIONED TABLE"})) {
                while (rs.next()) {
                    String name = rs.getString("TABLE_NAME");
                    if (name.matches("fact_payments_\\d{4}_\\d{2}")) continue;  // partitions
                    relations.add(name);
                    String remarks = rs.getString("REMARKS");
                    if (remarks == null || remarks.isBlank()) uncommented.add(name);
                }
            }
            for (String expected : new String[] {"dim_date", "dim_customer", "dim_loan",
                    "dim_payment_method", "fact_payments", "fact_loans", "vw_monthly_revenue",
                    "vw_top_customers", "vw_loan_status_distribution", "vw_payment_by_method",
                    "vw_portfolio_by_segment", "vw_branch_collections",
                    "vw_replication_lag_current", "vw_replication_lag_per_minute"}) {
                check(relations.contains(expected), "DatabaseMetaData lists warehouse." + expected);
            }
            check(uncommented.isEmpty(), "every warehouse relation has a comment " + uncommented);

            // Columns an analyst sees, each with a comment.
            List<String> bare = new ArrayList<>();
            int columns = 0;
            try (ResultSet rs = meta.getColumns(null, "warehouse", "%", "%")) {
                while (rs.next()) {
                    String table = rs.getString("TABLE_NAME");
                    if (table.matches("fact_payments_\\d{4}_\\d{2}")) continue;
                    columns++;
                    String remarks = rs.getString("REMARKS");
                    if (remarks == null || remarks.isBlank())
                        bare.add(table + "." + rs.getString("COLUMN_NAME"));
                }
            }
            check(columns > 100, "DatabaseMetaData reads the warehouse columns (" + columns + ")");
            check(bare.isEmpty(), "every warehouse column has a comment " + bare);

            // What the login may read, as Metabase checks before listing.
            for (String rel : relations) {
                try (Statement st = conn.createStatement();
                     ResultSet rs = st.executeQuery("SELECT * FROM warehouse." + rel + " LIMIT 1")) {
                    check(true, "SELECT from warehouse." + rel);
                } catch (SQLException e) {
                    check(false, "SELECT from warehouse." + rel + ": " + e.getMessage());
                }
            }
            for (String hidden : new String[] {"staging.stg_payments", "audit.etl_rejects",
                    "audit.etl_state", "operational.customers", "eds.change_log",
                    "pg_catalog.pg_user_mapping"}) {
                try (Statement st = conn.createStatement();
                     ResultSet rs = st.executeQuery("SELECT * FROM " + hidden + " LIMIT 1")) {
                    check(false, hidden + " is readable but should not be");
                } catch (SQLException e) {
                    check("42501".equals(e.getSQLState()), hidden + " is refused (" + e.getSQLState() + ")");
                }
            }

            // Every dashboard card's query answers, with rows.
            check(cards.size() >= 6, "the dashboard has its cards (" + cards.size() + ")");
            for (Map.Entry<String, String> card : cards.entrySet()) {
                try (Statement st = conn.createStatement();
                     ResultSet rs = st.executeQuery(card.getValue().replaceAll(";\\s*$", ""))) {
                    check(rs.next(), "card \"" + card.getKey() + "\" returns rows");
                } catch (SQLException e) {
                    check(false, "card \"" + card.getKey() + "\": " + e.getMessage());
                }
            }
        }
        System.out.println(failures == 0 ? "all checks passed" : failures + " checks failed");
        System.exit(failures == 0 ? 0 : 1);
    }
}
