// pgJDBC reading masked results through the Chaperone sidecar, in text and binary format. Run as a
// single-file source program: java -cp postgresql.jar MaskedJdbc.java
//
// Connection settings come from libpq's variable names (PGHOST, PGPORT, PGUSER, PGDATABASE);
// CHAPERONE_TOKENS is {"label": "token", ...} with one identity token per masking strategy under test (a
// flat JSON object of strings). For each label the script reads `select * from typed order by id` twice:
// text (binaryTransfer=false) and binary (prepareThreshold=-1 forces binary transfer from the first
// execution; binaryTransferEnable adds the types pgJDBC leaves in text by default). Each read prints one JSON
// line {"step": "<label>/<format>", "ok", "formats", "columns", "rows"}: values through getObject (arrays
// through getArray, bytes as {"hex"}, timestamps as epoch seconds, numerics as plain text). A decoding
// error is a failed step.
import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.postgresql.PGResultSetMetaData;
import org.postgresql.util.PGobject;

public class MaskedJdbc {
  static final String QUERY = "select * from typed order by id";
  // text, varchar, numeric, uuid, bytea, text[], int4[], date, timestamptz, int4, int8. Not json and jsonb:
  // pgJDBC 42.7 reads a binary json value as null straight from the server too.
  static final String BINARY_TYPES = "25,1043,1700,2950,17,1009,1007,1082,1184,23,20";

  public static void main(String[] args) throws Exception {
    Map<String, String> tokens = new LinkedHashMap<>();
    Matcher m = Pattern.compile("\"([^\"]+)\"\\s*:\\s*\"([^\"]+)\"").matcher(env("CHAPERONE_TOKENS"));
    while (m.find()) tokens.put(m.group(1), m.group(2));
    for (Map.Entry<String, String> e : tokens.entrySet()) {
      for (boolean binary : new boolean[] {false, true}) {
        String step = e.getKey() + "/" + (binary ? "binary" : "text");
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("step", step);
        try (Connection c = connect(e.getValue(), binary)) {
          read(c, out);
          // Again on the same connection: the named server-side statement, no new Parse.
          read(c, out);
          out.put("ok", true);
        } catch (SQLException ex) {
          out.put("ok", false);
          out.put("sqlstate", ex.getSQLState());
          out.put("error", String.valueOf(ex.getMessage()));
        } catch (Exception ex) {
          out.put("ok", false);
          out.put("error", ex.toString());
        }
        System.out.println(json(out));
        System.out.flush();
      }
    }
  }

  static Connection connect(String token, boolean binary) throws SQLException {
    Properties p = new Properties();
    p.setProperty("user", env("PGUSER"));
    p.setProperty("password", token);
    p.setProperty("sslmode", "disable");
    p.setProperty("binaryTransfer", String.valueOf(binary));
    p.setProperty("prepareThreshold", binary ? "-1" : "1");
    if (binary) p.setProperty("binaryTransferEnable", BINARY_TYPES);
    String url = "jdbc:postgresql://" + env("PGHOST") + ":" + env("PGPORT") + "/" + env("PGDATABASE");
    return DriverManager.getConnection(url, p);
  }

  static void read(Connection c, Map<String, Object> out) throws SQLException {
    try (PreparedStatement ps = c.prepareStatement(QUERY); ResultSet rs = ps.executeQuery()) {
      ResultSetMetaData md = rs.getMetaData();
      PGResultSetMetaData pg = md.unwrap(PGResultSetMetaData.class);
      List<Object> formats = new ArrayList<>();
      List<Object> columns = new ArrayList<>();
      for (int i = 1; i <= md.getColumnCount(); i++) {
        formats.add(pg.getFormat(i));
        columns.add(md.getColumnName(i));
      }
      List<Object> rows = new ArrayList<>();
      while (rs.next()) {
        List<Object> row = new ArrayList<>();
        for (int i = 1; i <= md.getColumnCount(); i++) row.add(plain(rs.getObject(i)));
        rows.add(row);
      }
      out.put("formats", formats);
      out.put("columns", columns);
      out.put("rows", rows);
    }
  }

  static Object plain(Object v) throws SQLException {
    if (v == null || v instanceof Boolean || v instanceof Integer || v instanceof Long || v instanceof String) return v;
    if (v instanceof BigDecimal d) return d.toPlainString();
    if (v instanceof Timestamp t) return Map.of("epoch", t.getTime() / 1000.0);
    if (v instanceof java.sql.Date d) return d.toString();
    if (v instanceof java.util.UUID u) return u.toString();
    if (v instanceof byte[] b) return Map.of("hex", HexFormat.of().formatHex(b));
    if (v instanceof PGobject o) return Map.of("json", String.valueOf(o.getValue()));
    if (v instanceof Array a) {
      List<Object> items = new ArrayList<>();
      for (Object o : (Object[]) a.getArray()) items.add(plain(o));
      return items;
    }
    return Map.of("unexpected", v.getClass().getName(), "value", v.toString());
  }

  static String env(String name) {
    String value = System.getenv(name);
    if (value == null || value.isEmpty()) throw new IllegalStateException(name + " is not set");
    return value;
  }

  static String json(Object v) {
    if (v == null) return "null";
    if (v instanceof Boolean || v instanceof Number) return v.toString();
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
      char ch = s.charAt(i);
      switch (ch) {
        case '"' -> b.append("\\\"");
        case '\\' -> b.append("\\\\");
        case '\n' -> b.append("\\n");
        default -> {
          if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
          else b.append(ch);
        }
      }
    }
    return b.append('"').toString();
  }
}
