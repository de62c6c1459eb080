"""What the sales automations leave behind as files, declared to platform_cleanup (batchkit.retention).

platform_cleanup finds this module by its place (include/<domain>/retention.py) and removes each
declared folder's files of days older than the RetentionPolicy param `days_field` names.
"""

from __future__ import annotations

from batchkit.retention import FileRetention
from include.sales.daily_report import REPORT_NAME, report_day_of

FILE_RETENTION = (
    # <base>/sales_daily/sales_daily_<day>.{csv,html}, written by dags/sales/sales_daily_report.py.
    FileRetention(
        name="sales_daily_report", folder=REPORT_NAME, day_of=report_day_of, days_field="report_file_days"
    ),
)
