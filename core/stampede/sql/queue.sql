-- Named queries over procrastinate's tables that procrastinate's JobManager does not offer
-- (stampede.queue). Read-only: procrastinate owns its tables.

-- name: depth
-- Jobs waiting (todo) and running (doing) on one queue.
SELECT status::text AS status, count(*)::bigint AS jobs
  FROM procrastinate_jobs
 WHERE queue_name = %(queue)s AND status IN ('todo', 'doing')
 GROUP BY status;
