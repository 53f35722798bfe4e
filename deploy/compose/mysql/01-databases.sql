-- Run once by the mysql image on an empty data volume: one database per service and the gateway
-- (ARCHITECTURE §2), owned by the application user `tuike` that MYSQL_USER created.
CREATE DATABASE IF NOT EXISTS `tuike_user` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE DATABASE IF NOT EXISTS `tuike_order` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE DATABASE IF NOT EXISTS `tuike_commission` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE DATABASE IF NOT EXISTS `tuike_stats` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
-- The gateway's own: platform API keys and the gateway audit log.
CREATE DATABASE IF NOT EXISTS `tuike_gateway` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
GRANT ALL PRIVILEGES ON `tuike_user`.* TO 'tuike'@'%';
GRANT ALL PRIVILEGES ON `tuike_order`.* TO 'tuike'@'%';
GRANT ALL PRIVILEGES ON `tuike_commission`.* TO 'tuike'@'%';
GRANT ALL PRIVILEGES ON `tuike_stats`.* TO 'tuike'@'%';
GRANT ALL PRIVILEGES ON `tuike_gateway`.* TO 'tuike'@'%';
FLUSH PRIVILEGES;
