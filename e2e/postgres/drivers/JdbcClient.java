// pgJDBC through the Chaperone sidecar: a fixed script, one JSON line per step on stdout. Run as a
// single-file source program: java -cp postgresql.jar JdbcClient.java
//
// Connection settings come from libpq's variable names (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD =
// the writer's identity token, PGAPPNAME); CHAPERONE_READER_TOKEN is the token of a subject the test's
// policy only lets read. prepareThreshold=1 makes pgJDBC use named server-side prepared statements from the
// first execution. Every step prints {"step", "ok", ...}; a failed step prints "sqlstate" and "error"
// and the script carries on, so the test sees every failure at once.
import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class JdbcClient {
  static final String TABLE = "drivers_jdbc";
  static final String CHANNEL = "drivers_jdbc_channel";

  interface StepBody {
    void run(Map<String, Object> out) throws Exception;
  }

  public static void main(String[] args) throws Exception {
    String writerToken = env("PGPASSWORD");
    String readerToken = env("CHAPERONE_READER_TOKEN");
    Connection[] conn = new Connection[1];
    Connection[] reader = new Connection[1];

    step("connect", out -> {
      conn[0] = connect(writerToken);
      try (Statement st = conn[0].createStatement();
          ResultSet rs = st.executeQuery("select current_database(), pg_backend_pid(), current_setting('application_name')")) {
        rs.next();
        out.put("driver", conn[0].getMetaData().getDriverVersion());
        out.put("serverVersion", conn[0].getMetaData().getDatabaseProductVersion());
        out.put("database", rs.getString(1));
        out.put("upstreamPid", rs.getInt(2));
        out.put("clientPid", conn[0].unwrap(PGConnection.class).getBackendPID());
        out.put("applicationName", rs.getString(3));
      }
    });

    step("create", out -> {
      try (Statement st = conn[0].createStatement()) {
        st.execute("drop table if exists " + TABLE);
        st.execute("create table " + TABLE + " (id int primary key, name text not null, amount numeric(10,2))");
      }
    });

    step("insert_prepared", out -> {
      // Named server-side statement (prepareThreshold=1): Parse S_n once, then Bind/Execute per call.
      try (PreparedStatement ps =
          conn[0].prepareStatement("insert into " + TABLE + " (id, name, amount) values (?, ?, ?)")) {
        List<Object> counts = new ArrayList<>();
        ps.setInt(1, 1);
        ps.setString(2, "alpha");
        ps.setBigDecimal(3, new BigDecimal("1.50"));
        counts.add(ps.executeUpdate());
        ps.setInt(1, 2);
        ps.setString(2, "o'brien ü");
        ps.setNull(3, java.sql.Types.NUMERIC);
        counts.add(ps.executeUpdate());
        ps.setInt(1, 3);
        ps.setString(2, "gamma");
        ps.setBigDecimal(3, new BigDecimal("-3.25"));
        counts.add(ps.executeUpdate());
        out.put("rowcounts", counts);
      }
    });

    step("batch", out -> {
      // executeBatch pipelines several Bind/Execute pairs before a single Sync.
      try (PreparedStatement ps = conn[0].prepareStatement("insert into " + TABLE + " (id, name, amount) values (?, ?, ?)")) {
        for (int i = 20; i < 25; i++) {
          ps.setInt(1, i);
          ps.setString(2, "batch-" + i);
          ps.setBigDecimal(3, new BigDecimal(i));
          ps.addBatch();
        }
        List<Object> counts = new ArrayList<>();
        for (int c : ps.executeBatch()) counts.add(c);
        out.put("rowcounts", counts);
      }
    });

    step("statement", out -> {
      try (Statement st = conn[0].createStatement()) {
        out.put("rowcount", st.executeUpdate("insert into " + TABLE + " (id, name, amount) values (4, 'plain', 4.00)"));
      }
    });

    step("savepoint", out -> {
      Connection c = conn[0];
      c.setAutoCommit(false);
      try (PreparedStatement ps = c.prepareStatement("insert into " + TABLE + " (id, name) values (?, ?)")) {
        ps.setInt(1, 10);
        ps.setString(2, "kept");
        ps.executeUpdate();
        Savepoint sp = c.setSavepoint("s1");
        ps.setInt(1, 11);
        ps.setString(2, "rolled back");
        ps.executeUpdate();
        out.put("countInside", count(c, "id in (10, 11)"));
        c.rollback(sp);
        ps.setInt(1, 12);
        ps.setString(2, "after rollback");
        ps.executeUpdate();
        c.commit();
      } finally {
        c.setAutoCommit(true);
      }
      out.put("ids", ids(c, "id between 10 and 19"));
    });

    step("select", out -> {
      try (PreparedStatement ps = conn[0].prepareStatement("select id, name, amount from " + TABLE + " where id < ? order by id")) {
        ps.setInt(1, 10);
        List<Object> rows = new ArrayList<>();
        try (ResultSet rs = ps.executeQuery()) {
          while (rs.next()) {
            BigDecimal amount = rs.getBigDecimal(3);
            rows.add(List.of(rs.getInt(1), rs.getString(2), amount == null ? "NULL" : amount.toPlainString()));
          }
        }
        out.put("rows", rows);
      }
    });

    step("copy_in", out -> {
      CopyManager copy = conn[0].unwrap(PGConnection.class).getCopyAPI();
      String data = "100\tcopied\\t100\t25.00\n101\tcopied\\t101\t25.25\n102\tcopied\\t102\t25.50\n";
      out.put("rowcount", copy.copyIn("copy " + TABLE + " (id, name, amount) from stdin", new StringReader(data)));
      out.put("count", count(conn[0], "id >= 100"));
    });

    step("copy_out", out -> {
      CopyManager copy = conn[0].unwrap(PGConnection.class).getCopyAPI();
      StringWriter text = new StringWriter();
      long rows = copy.copyOut("copy (select id, name from " + TABLE + " where id >= 100 order by id) to stdout", text);
      out.put("rowcount", rows);
      out.put("text", text.toString());
    });

    step("notify", out -> {
      try (Connection listener = connect(writerToken)) {
        try (Statement st = listener.createStatement()) {
          st.execute("listen " + CHANNEL);
        }
        try (Statement st = conn[0].createStatement()) {
          st.execute("notify " + CHANNEL + ", 'hello from jdbc'");
        }
        try (PreparedStatement ps = conn[0].prepareStatement("select pg_notify(?, ?)")) {
          ps.setString(1, CHANNEL);
          ps.setString(2, "second");
          ps.execute();
        }
        List<Object> got = new ArrayList<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        while (got.size() < 2 && System.nanoTime() < deadline) {
          PGNotification[] ns = listener.unwrap(PGConnection.class).getNotifications(1000);
          if (ns == null) continue;
          for (PGNotification n : ns) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("channel", n.getName());
            m.put("payload", n.getParameter());
            m.put("pid", n.getPID());
            got.add(m);
          }
        }
        out.put("notifications", got);
      }
    });

    step("cancel", out -> {
      // Cancel from another thread, as an application would; repeated (at most 5 times) because
      // Statement.cancel() does nothing until the statement is executing.
      ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
      AtomicInteger sent = new AtomicInteger();
      try (Statement st = conn[0].createStatement()) {
        timer.scheduleWithFixedDelay(() -> {
          if (sent.get() >= 5) return;
          try {
            st.cancel();
            sent.incrementAndGet();
          } catch (SQLException e) {
            e.printStackTrace();
          }
        }, 500, 1000, TimeUnit.MILLISECONDS);
        try {
          st.executeQuery("select pg_sleep(30)");
          out.put("cancelled", false);
        } catch (SQLException e) {
          out.put("cancelled", true);
          out.put("sqlstate", e.getSQLState());
        } finally {
          timer.shutdownNow();
          timer.awaitTermination(10, TimeUnit.SECONDS);
        }
      }
      out.put("cancelRequests", sent.get());
      try (Statement st = conn[0].createStatement(); ResultSet rs = st.executeQuery("select 'usable after cancel'")) {
        rs.next();
        out.put("after", rs.getString(1));
      }
    });

    step("reader_connect", out -> {
      reader[0] = connect(readerToken);
      out.put("count", count(reader[0], "true"));
    });

    step("denied_prepared", out -> denied(reader[0], out, () -> {
      try (PreparedStatement ps = reader[0].prepareStatement("insert into " + TABLE + " (id, name) values (?, ?)")) {
        ps.setInt(1, 900);
        ps.setString(2, "x");
        ps.executeUpdate();
      }
    }));

    step("denied_statement", out -> denied(reader[0], out, () -> {
      try (Statement st = reader[0].createStatement()) {
        st.executeUpdate("delete from " + TABLE);
      }
    }));

    step("denied_batch", out -> denied(reader[0], out, () -> {
      try (PreparedStatement ps = reader[0].prepareStatement("update " + TABLE + " set name = ? where id = ?")) {
        for (int i = 1; i <= 3; i++) {
          ps.setString(1, "denied");
          ps.setInt(2, i);
          ps.addBatch();
        }
        ps.executeBatch();
      }
    }));

    step("denied_in_transaction", out -> {
      // A denial inside a transaction aborts it (25P02 afterwards) until the client rolls back.
      Connection c = reader[0];
      c.setAutoCommit(false);
      try {
        out.put("before", count(c, "true"));
        try (Statement st = c.createStatement()) {
          st.executeUpdate("delete from " + TABLE);
        } catch (SQLException e) {
          out.put("sqlstate", e.getSQLState());
        }
        try {
          count(c, "true");
        } catch (SQLException e) {
          out.put("afterDenial", e.getSQLState());
        }
        c.rollback();
        out.put("afterRollback", count(c, "true"));
      } finally {
        c.setAutoCommit(true);
      }
    });

    step("close", out -> {
      reader[0].close();
      try (Statement st = conn[0].createStatement()) {
        st.execute("drop table " + TABLE);
      }
      conn[0].close();
    });
  }

  interface Action {
    void run() throws Exception;
  }

  /** Runs an action the policy must deny, then proves the same connection still answers. */
  static void denied(Connection c, Map<String, Object> out, Action action) throws Exception {
    try {
      action.run();
      out.put("denied", false);
    } catch (SQLException e) {
      out.put("denied", true);
      out.put("sqlstate", sqlState(e));
      out.put("message", e.getMessage());
    }
    try (PreparedStatement ps = c.prepareStatement("select ?::int + 1")) {
      ps.setInt(1, 41);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        out.put("after", rs.getInt(1));
      }
    }
  }

  /** A BatchUpdateException carries the server's error as its next exception. */
  static String sqlState(SQLException e) {
    SQLException next = e.getNextException();
    return e.getSQLState() == null && next != null ? next.getSQLState() : e.getSQLState();
  }

  static Connection connect(String token) throws SQLException {
    String url = "jdbc:postgresql://" + env("PGHOST") + ":" + env("PGPORT") + "/" + env("PGDATABASE");
    Properties p = new Properties();
    p.setProperty("user", env("PGUSER"));
    p.setProperty("password", token);
    p.setProperty("sslmode", "disable");
    p.setProperty("prepareThreshold", "1");
    p.setProperty("ApplicationName", System.getenv().getOrDefault("PGAPPNAME", "JdbcClient"));
    p.setProperty("connectTimeout", "10");
    return DriverManager.getConnection(url, p);
  }

  static long count(Connection c, String where) throws SQLException {
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("select count(*) from " + TABLE + " where " + where)) {
      rs.next();
      return rs.getLong(1);
    }
  }

  static List<Object> ids(Connection c, String where) throws SQLException {
    List<Object> ids = new ArrayList<>();
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("select id from " + TABLE + " where " + where + " order by id")) {
      while (rs.next()) ids.add(rs.getInt(1));
    }
    return ids;
  }

  static String env(String name) {
    String value = System.getenv(name);
    if (value == null || value.isEmpty()) throw new IllegalStateException(name + " is not set");
    return value;
  }

  static void step(String name, StepBody body) {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("step", name);
    long started = System.nanoTime();
    try {
      body.run(out);
      out.put("ok", true);
    } catch (SQLException e) {
      out.put("ok", false);
      out.put("sqlstate", sqlState(e));
      out.put("error", String.valueOf(e.getMessage()));
    } catch (Exception e) {
      out.put("ok", false);
      out.put("error", e.toString());
    }
    out.put("ms", (System.nanoTime() - started) / 1_000_000);
    System.out.println(json(out));
    System.out.flush();
  }

  static String json(Object v) {
    if (v == null) return "null";
    if (v instanceof Boolean || v instanceof Integer || v instanceof Long) return v.toString();
    if (v instanceof Number) return v.toString();
    if (v instanceof Map<?, ?> m) {
      StringBuilder b = new StringBuilder("{");
      for (Map.Entry<?, ?> e : m.entrySet()) {
        if (b.length() > 1) b.append(',');
        b.append(json(String.valueOf(e.getKey()))).append(':').append(json(e.getValue()));
      }
      return b.append('}').toString();
    }
    if (v instanceof List<?> l) {
      StringBuilder b = new StringBuilder("[");
      for (Object o : l) {
        if (b.length() > 1) b.append(',');
        b.append(json(o));
      }
      return b.append(']').toString();
    }
    String s = v.toString();
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"' -> b.append("\\\"");
        case '\\' -> b.append("\\\\");
        case '\n' -> b.append("\\n");
        case '\r' -> b.append("\\r");
        case '\t' -> b.append("\\t");
        default -> {
          if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
          else b.append(c);
        }
      }
    }
    return b.append('"').toString();
  }
}
