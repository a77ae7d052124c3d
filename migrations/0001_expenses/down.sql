DROP TABLE expenses;
DROP TABLE employees;
