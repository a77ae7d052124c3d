-- One embedding per expense for the `similar_transactions` step of workflows/finance_report.toml:
-- four hand-made dimensions (travel, learning, food and social, equipment), so the example's
-- similarity search has a meaning a reader can check. The table has the vector node's own
-- layout on SQLite (what `create_table` makes, registered in `trellis_vector_tables`).
CREATE TABLE IF NOT EXISTS trellis_vector_tables (table_name TEXT PRIMARY KEY, dimension INTEGER NOT NULL);
CREATE TABLE transaction_embeddings (
    id INTEGER PRIMARY KEY,
    embedding TEXT NOT NULL CHECK (json_array_length(embedding) = 4),
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO trellis_vector_tables (table_name, dimension) VALUES ('transaction_embeddings', 4);
INSERT INTO transaction_embeddings (id, embedding, metadata) VALUES
    (1, '[0.1, 0.0, 0.9, 0.0]', '{"expense_id": 1, "department": "finance", "amount": 420.0, "description": "year-end audit dinner"}'),
    (2, '[0.4, 0.9, 0.1, 0.0]', '{"expense_id": 2, "department": "finance", "amount": 1250.5, "description": "conference: FinOps Summit"}'),
    (3, '[0.0, 0.8, 0.0, 0.3]', '{"expense_id": 3, "department": "finance", "amount": 89.9, "description": "books"}'),
    (4, '[0.8, 0.0, 0.3, 0.0]', '{"expense_id": 4, "department": "finance", "amount": 310.0, "description": "client visit"}'),
    (5, '[0.9, 0.0, 0.0, 0.0]', '{"expense_id": 5, "department": "finance", "amount": 45.25, "description": "taxi"}'),
    (6, '[0.1, 0.9, 0.0, 0.0]', '{"expense_id": 6, "department": "finance", "amount": 760.0, "description": "training: forecasting"}'),
    (7, '[0.0, 0.0, 0.9, 0.0]', '{"expense_id": 7, "department": "finance", "amount": 120.0, "description": "team lunch"}'),
    (8, '[0.3, 0.2, 0.2, 0.5]', '{"expense_id": 8, "department": "hr", "amount": 980.0, "description": "recruiting fair booth"}'),
    (9, '[0.9, 0.0, 0.1, 0.0]', '{"expense_id": 9, "department": "hr", "amount": 150.75, "description": "interview travel"}'),
    (10, '[0.0, 0.0, 0.0, 0.9]', '{"expense_id": 10, "department": "hr", "amount": 65.0, "description": "office supplies"}'),
    (11, '[0.0, 0.1, 0.0, 0.9]', '{"expense_id": 11, "department": "engineering", "amount": 2100.0, "description": "GPU rental"}'),
    (12, '[0.0, 0.0, 0.0, 0.8]', '{"expense_id": 12, "department": "engineering", "amount": 35.0, "description": "cables"}'),
    (13, '[0.0, 0.0, 0.0, 0.9]', '{"expense_id": 13, "department": "engineering", "amount": 499.0, "description": "keyboard and monitor arm"}'),
    (14, '[0.5, 0.9, 0.1, 0.0]', '{"expense_id": 14, "department": "engineering", "amount": 1340.0, "description": "conference: RustConf"}'),
    (15, '[0.9, 0.0, 0.0, 0.0]', '{"expense_id": 15, "department": "engineering", "amount": 60.4, "description": "taxi"}');
