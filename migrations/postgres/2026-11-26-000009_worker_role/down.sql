ALTER TABLE cascade.workers DROP COLUMN role;
