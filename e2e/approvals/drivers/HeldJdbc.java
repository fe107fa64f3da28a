// pgJDBC with a statement held for approval at its Bind: one JSON line per step on stdout. A
// PreparedStatement (Parse, Bind, Describe, Execute, Sync); the first insert is approved by the test, the
// second denied; then the session must go on. Run as a single-file program: java -cp postgresql.jar HeldJdbc.java
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Properties;

public class HeldJdbc {
  static void emit(String step, String fields) {
    System.out.println("{\"step\":\"" + step + "\"," + fields + "}");
    System.out.flush();
  }

  static String quoted(String s) {
    return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", " ") + "\"";
  }

  static void insert(Connection conn, String step, int amount) {
    try (PreparedStatement ps = conn.prepareStatement("insert into payouts(amount, note) values (?, ?)")) {
      ps.setInt(1, amount);
      ps.setString(2, "jdbc");
      int n = ps.executeUpdate();
      int warnings = 0;
      for (var w = ps.getWarnings(); w != null; w = w.getNextWarning()) warnings++;
      emit(step, "\"ok\":true,\"rowcount\":" + n + ",\"warnings\":" + warnings);
    } catch (SQLException e) {
      emit(step, "\"ok\":false,\"sqlstate\":" + quoted(String.valueOf(e.getSQLState())) + ",\"error\":" + quoted(String.valueOf(e.getMessage())));
    }
  }

  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.setProperty("user", System.getenv("PGUSER"));
    props.setProperty("password", System.getenv("PGPASSWORD"));
    props.setProperty("sslmode", "disable");
    String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/" + System.getenv("PGDATABASE");
    try (Connection conn = DriverManager.getConnection(url, props)) {
      insert(conn, "approved", 61);
      insert(conn, "denied", 62);
      try (ResultSet rs = conn.createStatement().executeQuery("select 7")) {
        rs.next();
        emit("after", "\"ok\":true,\"value\":" + rs.getInt(1));
      }
    }
  }
}
