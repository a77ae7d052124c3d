INSERT INTO employees (id, name, email, ssn, salary, department) VALUES
    (1, 'Ada Byron', 'ada.byron@acme.example', '123-45-6789', 98000, 'finance'),
    (2, 'Ben Ortiz', 'ben.ortiz@acme.example', '234-56-7890', 72000, 'finance.analysis'),
    (3, 'Chen Wei', 'chen.wei@acme.example', '345-67-8901', 75500, 'finance.analysis'),
    (4, 'Dana Kim', 'dana.kim@acme.example', '456-78-9012', 88000, 'hr'),
    (5, 'Eli Stone', 'eli.stone@acme.example', '567-89-0123', 64000, 'hr'),
    (6, 'Fay Moreau', 'fay.moreau@acme.example', '678-90-1234', 120000, 'engineering'),
    (7, 'Gus Patel', 'gus.patel@acme.example', '789-01-2345', 105000, 'engineering.backend'),
    (8, 'Hana Sato', 'hana.sato@acme.example', '890-12-3456', 99000, 'engineering.backend');

INSERT INTO expenses (id, employee_id, department, amount, date, description) VALUES
    (1, 1, 'finance', 420.00, '2023-12-18', 'year-end audit dinner'),
    (2, 1, 'finance', 1250.50, '2024-02-03', 'conference: FinOps Summit'),
    (3, 1, 'finance', 89.90, '2024-03-14', 'books'),
    (4, 2, 'finance', 310.00, '2024-01-22', 'client visit'),
    (5, 2, 'finance', 45.25, '2024-04-09', 'taxi'),
    (6, 3, 'finance', 760.00, '2024-02-27', 'training: forecasting'),
    (7, 3, 'finance', 120.00, '2024-05-30', 'team lunch'),
    (8, 4, 'hr', 980.00, '2024-01-15', 'recruiting fair booth'),
    (9, 4, 'hr', 150.75, '2024-03-02', 'interview travel'),
    (10, 5, 'hr', 65.00, '2024-04-18', 'office supplies'),
    (11, 6, 'engineering', 2100.00, '2024-02-11', 'GPU rental'),
    (12, 6, 'engineering', 35.00, '2023-11-30', 'cables'),
    (13, 7, 'engineering', 499.00, '2024-03-21', 'keyboard and monitor arm'),
    (14, 8, 'engineering', 1340.00, '2024-05-06', 'conference: RustConf'),
    (15, 8, 'engineering', 60.40, '2024-06-01', 'taxi');
