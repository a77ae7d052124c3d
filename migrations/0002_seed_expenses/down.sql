DELETE FROM expenses;
DELETE FROM employees;
