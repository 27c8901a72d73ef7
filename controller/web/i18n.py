"""The web app's words, in Vietnamese (the default) and English (?lang=en).

One concept, one word, as in the project glossary: cụm loa, thông báo khẩn, phát ngay,
dừng phát, đang phát, đã phát xong, bị ngắt, mất kết nối, nhật ký thao tác, phê duyệt.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")

TEXT: dict[str, dict[Lang, str]] = {
    "app": {"vi": "Loa — Hệ thống quản lý truyền thanh", "en": "Loa — broadcast controller"},
    "sign_in": {"vi": "Đăng nhập", "en": "Sign in"},
    "sign_out": {"vi": "Đăng xuất", "en": "Sign out"},
    "user_name": {"vi": "Tên đăng nhập", "en": "User name"},
    "password": {"vi": "Mật khẩu", "en": "Password"},
    "bad_login": {
        "vi": "Sai tên đăng nhập hoặc mật khẩu.", "en": "Wrong user name or password.",
    },
    "too_many": {
        "vi": "Đăng nhập sai quá nhiều lần. Thử lại sau {s} giây.",
        "en": "Too many failed sign-ins. Try again in {s} seconds.",
    },
    "too_large": {
        "vi": "Nội dung gửi lên quá lớn (tối đa {size}).",
        "en": "What was sent is too large (at most {size}).",
    },
    "csrf": {
        "vi": "Phiên làm việc đã hết hạn hoặc biểu mẫu không hợp lệ. Tải lại trang và thử lại.",
        "en": "Your session expired or the form is not valid. Reload the page and try again.",
    },
    "new_urgent": {"vi": "Thông báo khẩn mới", "en": "New urgent announcement"},
    "history": {"vi": "Thông báo đã gửi", "en": "Sent announcements"},
    "audit": {"vi": "Nhật ký thao tác", "en": "Audit log"},
    "approvals": {"vi": "Phê duyệt", "en": "Approvals"},
    "enrolments": {"vi": "Đăng ký thiết bị", "en": "Device enrolment"},
    "enrol_help": {
        "vi": "Thiết bị thu mới xin đăng ký định danh (khóa) của mình. Chỉ duyệt khi kỹ thuật "
              "viên xác nhận mã khóa hiện trên thiết bị (lệnh loa-agent check).",
        "en": "New receiver boxes ask to have their identity (key) registered. Approve only "
              "when the technician confirms the key shown on the box (loa-agent check).",
    },
    "key": {"vi": "Mã khóa", "en": "Key"},
    "asked_at": {"vi": "Lúc xin", "en": "Asked at"},
    "replaces_box": {"vi": "thay thiết bị cũ", "en": "replaces the old box"},
    "reject": {"vi": "Từ chối", "en": "Reject"},
    "registered_n": {
        "vi": "{n} trên {total} cụm loa đã đăng ký thiết bị.",
        "en": "{n} of {total} clusters registered.",
    },
    "not_registered": {"vi": "Chưa đăng ký", "en": "Not registered"},
    "your_scope": {"vi": "Phạm vi của bạn", "en": "Your area"},
    "targets": {"vi": "Nơi phát", "en": "Targets"},
    "targets_help": {
        "vi": "Chọn cả xã, một số ấp hoặc một số cụm loa.",
        "en": "Choose the whole commune, some villages or some clusters.",
    },
    "level": {"vi": "Mức", "en": "Level"},
    "level_priority": {"vi": "Ưu tiên", "en": "Priority"},
    "level_emergency": {"vi": "Khẩn cấp", "en": "Emergency"},
    "level_normal": {"vi": "Thông thường", "en": "Normal"},
    "content": {"vi": "Nội dung", "en": "Content"},
    "text": {"vi": "Văn bản (máy đọc)", "en": "Text (spoken by the machine)"},
    "text_help": {
        "vi": "Gõ nội dung; hệ thống chuyển văn bản thành giọng nói.",
        "en": "Type the message; it is turned into speech.",
    },
    "no_tts": {
        "vi": "Máy chủ chưa có bộ chuyển văn bản thành giọng nói: hãy tải tệp âm thanh lên "
              "hoặc ghi âm.",
        "en": "No text-to-speech engine on the controller: upload or record audio instead.",
    },
    "audio_file": {"vi": "Hoặc tệp âm thanh", "en": "Or an audio file"},
    "record": {"vi": "Ghi âm", "en": "Record"},
    "stop_record": {"vi": "Dừng ghi âm", "en": "Stop recording"},
    "recorded": {"vi": "Đã ghi âm — sẽ gửi bản ghi này.", "en": "Recorded — this will be sent."},
    "repeat": {"vi": "Số lần phát", "en": "Times to play"},
    "gap": {"vi": "Nghỉ giữa các lần (giây)", "en": "Gap between (seconds)"},
    "title": {"vi": "Tiêu đề (không bắt buộc)", "en": "Title (optional)"},
    "send": {"vi": "Phát ngay", "en": "Send now"},
    "stop": {"vi": "Dừng phát", "en": "Stop"},
    "stopped_by": {"vi": "Đã dừng bởi {u} lúc {t}", "en": "Stopped by {u} at {t}"},
    "cluster": {"vi": "Cụm loa", "en": "Cluster"},
    "commune": {"vi": "Xã", "en": "Commune"},
    "status": {"vi": "Trạng thái", "en": "Status"},
    "reason": {"vi": "Lý do", "en": "Reason"},
    "when": {"vi": "Thời điểm", "en": "When"},
    "sent_by": {"vi": "Người gửi", "en": "Sent by"},
    "all_played": {"vi": "Tất cả cụm loa đã phát xong.", "en": "Every cluster played it."},
    "forbidden": {
        "vi": "Không được phép: {t} nằm ngoài phạm vi của bạn ({s}). Không có gì được gửi.",
        "en": "Not allowed: {t} is outside your area ({s}). Nothing was sent.",
    },
    "not_found": {"vi": "Không tìm thấy.", "en": "Not found."},
    "manager_only": {
        "vi": "Chỉ cán bộ quản lý phát thanh được xem trang này.",
        "en": "Only broadcast managers may see this page.",
    },
    "download_csv": {"vi": "Tải về CSV", "en": "Download CSV"},
    "action": {"vi": "Thao tác", "en": "Action"},
    "outcome": {"vi": "Kết quả", "en": "Outcome"},
    "pending": {"vi": "Chờ duyệt", "en": "Pending"},
    "cap_not_aired": {
        "vi": "Cảnh báo CAP chưa phát (7 ngày qua)", "en": "CAP alerts not aired (last 7 days)",
    },
    "cap_held_until": {"vi": "chờ đến {at} mới phát", "en": "held until {at}"},
    "cap_expired_at": {
        "vi": "đã hết hạn lúc {at}, không phát", "en": "expired at {at}, not aired",
    },
    "cap_expired": {"vi": "đã hết hạn, không phát", "en": "expired, not aired"},
    "cap_refused": {
        "vi": "bị từ chối (người gửi hoặc chữ ký không hợp lệ)",
        "en": "refused (sender or signature not accepted)",
    },
    "approved": {"vi": "Đã duyệt", "en": "Approved"},
    "approve": {"vi": "Duyệt", "en": "Approve"},
    "nothing_pending": {
        "vi": "Không có chương trình nào chờ duyệt.", "en": "Nothing is waiting for approval.",
    },
    "none_yet": {"vi": "Chưa có.", "en": "None yet."},
    "st_sent": {"vi": "đã gửi", "en": "sent"},
    "st_offline": {"vi": "mất kết nối", "en": "offline"},
    "st_received": {"vi": "đã nhận lệnh", "en": "received"},
    "st_delivered": {"vi": "đã nhận nội dung", "en": "delivered"},
    "st_playing": {"vi": "đang phát", "en": "playing"},
    "st_finished": {"vi": "đã phát xong", "en": "finished"},
    "st_interrupted": {"vi": "bị ngắt", "en": "interrupted"},
    "st_missed": {"vi": "bị lỡ", "en": "missed"},
    "st_failed": {"vi": "lỗi", "en": "failed"},
    "st_expired": {"vi": "quá hạn, không phát", "en": "expired, not played"},
    "standby": {
        "vi": "Bộ điều khiển này đang dự phòng; bộ điều khiển chính là {leader} (từ {since}). "
              "Các trang vẫn xem được; thông báo gửi từ đây được chuyển tới bộ chính.",
        "en": "This controller stands by; {leader} leads (since {since}). Pages work as "
              "usual; what you send here is passed on to the leader.",
    },
    "no_leader": {
        "vi": "Bộ điều khiển này đang dự phòng và hiện không có bộ điều khiển chính: chưa gửi "
              "được gì cho tới khi một bộ nhận quyền (trong vài giây).",
        "en": "This controller stands by and no controller leads right now: nothing can be "
              "sent until one takes over (within seconds).",
    },
    "broker_down": {
        "vi": "Hệ thống quản lý mất kết nối tới máy chủ MQTT (broker) từ {since}: chưa gửi được "
              "thông báo khẩn cho tới khi kết nối lại. Các lượt phát đã gửi vẫn phát đúng giờ.",
        "en": "The controller has been unable to reach its broker since {since}: urgent "
              "announcements cannot be sent until it is back. Plays already sent still air "
              "on time.",
    },
    "not_sent": {
        "vi": "Chưa gửi: hệ thống quản lý mất kết nối tới máy chủ MQTT (broker). Không có gì "
              "được ghi lại; hãy gửi lại khi kết nối được khôi phục.",
        "en": "Not sent: the controller cannot reach its broker. Nothing was recorded; send "
              "it again once the connection is back.",
    },
    "kind_province": {"vi": "tỉnh", "en": "province"},
    "kind_district": {"vi": "huyện", "en": "district"},
    "kind_commune": {"vi": "xã", "en": "commune"},
    "kind_village": {"vi": "ấp", "en": "village"},
    "kind_cluster": {"vi": "cụm loa", "en": "cluster"},
    "clusters_n": {"vi": "{n} cụm loa", "en": "{n} clusters"},
    "language": {"vi": "English", "en": "Tiếng Việt"},
    "listen": {"vi": "Nghe thử", "en": "Listen first"},
    "listen_busy": {"vi": "Đang chuẩn bị âm thanh…", "en": "Preparing the audio…"},
    "listen_help": {
        "vi": "Nghe trước trên máy này; chưa phát ra loa.",
        "en": "Hear it here first; nothing goes to the speakers.",
    },
    "listen_bulletin": {"vi": "Nghe bản tin {n}", "en": "Listen to bulletin {n}"},
    "profile_horn": {"vi": "loa nén ngoài trời", "en": "outdoor horn speakers"},
    "profile_full-range": {"vi": "loa toàn dải trong nhà", "en": "indoor full-range speakers"},
    "level_help": {
        "vi": "Chỉ chọn Khẩn cấp khi có nguy hiểm ngay: nó ngắt mọi thứ đang phát.",
        "en": "Choose Emergency only for immediate danger: it interrupts everything playing.",
    },
    "audio_kept": {
        "vi": "Đã có tệp âm thanh của bạn; chọn tệp khác nếu muốn thay.",
        "en": "Your audio file is kept; choose another to replace it.",
    },
    "audio_unusable": {
        "vi": "Không dùng được tệp âm thanh: {reason}. {advice}",
        "en": "The audio file cannot be used: {reason}. {advice}",
    },
    "tts_failed": {
        "vi": "Máy chủ không chuyển được văn bản này thành giọng nói. Thử lại, hoặc tải tệp "
              "âm thanh lên hay ghi âm; báo cho kỹ thuật viên nếu lỗi còn lặp lại.",
        "en": "The controller could not turn this text into speech. Try again, or upload or "
              "record audio; tell the technician if it happens again.",
    },
    "unknown_target": {
        "vi": "Không có nơi phát {t} (danh sách cụm loa vừa thay đổi?). Tải lại trang và "
              "chọn lại.",
        "en": "There is no target {t} (the fleet just changed?). Reload the page and choose "
              "again.",
    },
    "content_unreadable": {
        "vi": "Không đọc được tệp âm thanh {file} của chương trình; báo cho người soạn "
              "danh sách phát.",
        "en": "The programme's audio file {file} cannot be read; tell whoever edits the "
              "playlist.",
    },
    "upload_gone": {
        "vi": "Tệp âm thanh đã tải lên không còn nữa; hãy chọn lại tệp.",
        "en": "The uploaded audio file is gone; choose the file again.",
    },
    "upload_empty": {"vi": "Tệp âm thanh trống.", "en": "The audio file is empty."},
    "bad_form": {
        "vi": "Thông tin gửi lên không hợp lệ (một ô số bị bỏ trống hoặc viết sai?). Quay "
              "lại, kiểm tra và gửi lại.",
        "en": "What was sent is not valid (a number left empty or mistyped?). Go back, "
              "check and send again.",
    },
    "server_error": {
        "vi": "Máy chủ gặp lỗi; chưa có gì được gửi. Thử lại sau ít phút; nếu vẫn lỗi, "
              "báo cho kỹ thuật viên.",
        "en": "The controller ran into an error; nothing was sent. Try again in a few "
              "minutes; if it persists, tell the technician.",
    },
    "confirm_title": {"vi": "Xác nhận phát ngay", "en": "Confirm sending now"},
    "confirm_to": {
        "vi": "sẽ phát ngay trên {n} cụm loa ở:",
        "en": "goes out now on {n} clusters in:",
    },
    "confirm_audio": {
        "vi": "Nội dung: tệp âm thanh đã chọn.", "en": "Content: the chosen audio file.",
    },
    "confirm_repeat": {"vi": "Phát {n} lần.", "en": "Played {n} times."},
    "confirm_yes": {"vi": "Xác nhận, phát ngay", "en": "Yes, send now"},
    "confirm_back": {"vi": "Quay lại sửa", "en": "Back to the form"},
    "act_send": {"vi": "phát thông báo khẩn", "en": "send"},
    "act_stop": {"vi": "dừng phát", "en": "stop"},
    "act_live-start": {"vi": "bắt đầu phát trực tiếp", "en": "live started"},
    "act_live-stop": {"vi": "kết thúc phát trực tiếp", "en": "live ended"},
    "act_approve": {"vi": "phê duyệt", "en": "approve"},
    "act_cap-alert": {"vi": "nhận cảnh báo CAP", "en": "CAP alert"},
    "act_cap-cancel": {"vi": "hủy theo cảnh báo CAP", "en": "CAP cancel"},
    "act_sign-in-refused": {"vi": "đăng nhập bị từ chối", "en": "sign-in refused"},
    "act_enrol-token": {"vi": "cấp mã đăng ký thiết bị", "en": "enrolment token"},
    "act_enrol-replace": {"vi": "cấp mã thay thiết bị", "en": "replacement token"},
    "act_enrol-register": {"vi": "đăng ký thiết bị", "en": "key registered"},
    "act_enrol-approve": {"vi": "duyệt đăng ký thiết bị", "en": "enrolment approved"},
    "act_enrol-reject": {"vi": "từ chối đăng ký thiết bị", "en": "enrolment rejected"},
    "csv_at": {"vi": "Thời điểm", "en": "At"},
    "csv_user": {"vi": "Người thực hiện", "en": "User"},
    "csv_action": {"vi": "Thao tác", "en": "Action"},
    "csv_subject": {"vi": "Đối tượng", "en": "Subject"},
    "csv_level": {"vi": "Mức", "en": "Level"},
    "csv_title": {"vi": "Tiêu đề", "en": "Title"},
    "csv_text": {"vi": "Văn bản", "en": "Text"},
    "csv_audio_sha256": {"vi": "Mã âm thanh (SHA-256)", "en": "Audio SHA-256"},
    "csv_targets": {"vi": "Nơi phát", "en": "Targets"},
    "csv_clusters": {"vi": "Cụm loa", "en": "Clusters"},
    "csv_outcome": {"vi": "Kết quả", "en": "Outcome"},
    "csv_detail": {"vi": "Chi tiết", "en": "Detail"},
    # Phát trực tiếp (controller/web/live.py)
    "live": {"vi": "Phát trực tiếp", "en": "Speak live"},
    "live_help": {
        "vi": "Chọn nơi phát và mức, bấm Phát trực tiếp rồi nói vào micrô; bấm Dừng phát "
              "để kết thúc. Đóng trang cũng kết thúc phiên phát.",
        "en": "Choose where and the level, press Speak live and talk into the microphone; "
              "press Stop to end. Closing the page ends it too.",
    },
    "live_on_air": {"vi": "Đang phát trực tiếp", "en": "Live now"},
    "live_none": {"vi": "Không có phiên phát trực tiếp nào.", "en": "Nothing is live."},
    "live_cut": {"vi": "Ngắt", "en": "Cut"},
    "live_rebroadcast": {"vi": "tiếp sóng", "en": "rebroadcast"},
    "live_microphone": {"vi": "phát trực tiếp", "en": "microphone"},
    "live_unavailable": {
        "vi": "Máy chủ quản lý này không phát trực tiếp được.",
        "en": "This controller carries no live sessions.",
    },
    "live_no_mic": {
        "vi": "Không dùng được micrô trên trình duyệt này.",
        "en": "The microphone cannot be used in this browser.",
    },
    "live_speaking": {"vi": "Đang phát trực tiếp tới {n} cụm loa", "en": "Live to {n} clusters"},
    "live_ended": {"vi": "Đã kết thúc phiên phát trực tiếp.", "en": "The live session has ended."},
    # Proof-of-play reports (controller/web/reports.py)
    "reports": {"vi": "Báo cáo kết quả phát", "en": "Proof-of-play reports"},
    "report_from": {"vi": "Từ ngày", "en": "From"},
    "report_to": {"vi": "Đến ngày", "en": "To"},
    "report_by": {"vi": "Theo", "en": "By"},
    "report_show": {"vi": "Xem báo cáo", "en": "Show"},
    "report_range": {
        "vi": "Các lượt phát bắt đầu từ ngày {first} đến hết ngày {last} (giờ {tz}).",
        "en": "Plays starting from {first} to the end of {last} ({tz} time).",
    },
    "report_bad_range": {
        "vi": "Khoảng ngày không hợp lệ: chọn ngày bắt đầu trước ngày kết thúc, tối đa 366 ngày.",
        "en": "Not a valid range: choose a first day before the last, at most 366 days.",
    },
    "report_empty": {
        "vi": "Không có lượt phát nào trong khoảng này.", "en": "No plays in this range.",
    },
    "report_table": {"vi": "Số liệu", "en": "Figures"},
    "by_cluster": {"vi": "Cụm loa", "en": "Cluster"},
    "by_commune": {"vi": "Xã", "en": "Commune"},
    "by_programme": {"vi": "Chương trình", "en": "Programme"},
    "by_level": {"vi": "Mức", "en": "Level"},
    "download_xlsx": {"vi": "Tải về Excel (XLSX)", "en": "Download Excel (XLSX)"},
    "chart_title": {
        "vi": "Đã phát xong so với theo lịch, theo xã",
        "en": "Aired in full vs scheduled, by commune",
    },
    "col_scheduled": {"vi": "Lượt phát theo lịch", "en": "Scheduled"},
    "col_aired": {"vi": "Đã phát xong", "en": "Aired in full"},
    "col_interrupted": {"vi": "Bị ngắt", "en": "Interrupted"},
    "col_missed": {"vi": "Bị lỡ", "en": "Missed"},
    "col_failed": {"vi": "Lỗi", "en": "Failed"},
    "col_no_result": {"vi": "Chưa có kết quả", "en": "No result yet"},
    "col_seconds": {"vi": "Số giây đã phát", "en": "Seconds aired"},
    "col_live": {
        "vi": "Số giây phát trực tiếp và tiếp sóng", "en": "Seconds aired live and relayed",
    },
    "col_offline": {"vi": "Mất kết nối (giây)", "en": "Offline (seconds)"},
    "col_not_sent": {"vi": "Không gửi được", "en": "Not sent"},
    "col_reasons": {"vi": "Lý do bị lỡ, lỗi", "en": "Why missed or failed"},
    "total": {"vi": "Tổng cộng", "en": "Total"},
    "heat_title": {
        "vi": "Cụm loa × ngày: đã phát xong trên số lượt theo lịch",
        "en": "Cluster × day: plays aired in full of those scheduled",
    },
    "heat_legend": {"vi": "Tỉ lệ đã phát xong:", "en": "Share aired in full:"},
    "heat_none": {"vi": "không có lượt phát", "en": "nothing scheduled"},
    # The fleet pages (controller/web/fleet.py)
    "fleet": {"vi": "Cụm loa", "en": "Fleet"},
    "fleet_counts": {
        "vi": "{n} cụm loa: {online} trực tuyến, {offline} mất kết nối, {unknown} chưa kết nối "
              "lần nào.",
        "en": "{n} clusters: {online} online, {offline} offline, {unknown} never connected.",
    },
    "all_communes": {"vi": "Tất cả các xã", "en": "All communes"},
    "fleet_state": {"vi": "Trạng thái", "en": "State"},
    "all_states": {"vi": "Mọi trạng thái", "en": "Any state"},
    "state_online": {"vi": "trực tuyến", "en": "online"},
    "state_offline": {"vi": "mất kết nối", "en": "offline"},
    "state_unknown": {"vi": "chưa kết nối", "en": "never connected"},
    "filter": {"vi": "Lọc", "en": "Filter"},
    "map": {"vi": "Bản đồ cụm loa", "en": "Map of clusters"},
    "no_coordinates": {
        "vi": "{n} cụm loa chưa có tọa độ (lat, lon) trong tệp danh sách cụm loa.",
        "en": "{n} clusters have no coordinates (lat, lon) in the fleet file.",
    },
    "last_seen": {"vi": "Liên lạc lần cuối", "en": "Last seen"},
    "playing_now": {"vi": "Đang phát", "en": "Playing"},
    "content_held": {"vi": "Nội dung (đã có / cần)", "en": "Content (held / needed)"},
    "relay": {"vi": "Rơ-le", "en": "Relay"},
    "disk_free": {"vi": "Dung lượng trống", "en": "Free disk"},
    "temperature": {"vi": "Nhiệt độ", "en": "Temperature"},
    "clock_offset": {"vi": "Lệch đồng hồ", "en": "Clock offset"},
    "last_refusal": {"vi": "Lệnh bị từ chối gần nhất", "en": "Last refused command"},
    "last_result": {"vi": "Kết quả phát gần nhất", "en": "Last result"},
    "coordinates": {"vi": "Tọa độ", "en": "Coordinates"},
    "recent_events": {"vi": "Sự kiện gần đây", "en": "Recent events"},
    "event": {"vi": "Sự kiện", "en": "Event"},
    "ev_received": {"vi": "đã nhận lệnh", "en": "received"},
    "ev_delivered": {"vi": "đã nhận nội dung", "en": "delivered"},
    "ev_playing": {"vi": "đang phát", "en": "playing"},
    "ev_finished": {"vi": "đã phát xong", "en": "finished"},
    "ev_interrupted": {"vi": "bị ngắt", "en": "interrupted"},
    "ev_missed": {"vi": "bị lỡ", "en": "missed"},
    "ev_failed": {"vi": "lỗi", "en": "failed"},
    "ev_rejected": {"vi": "từ chối lệnh", "en": "refused a command"},
    "ev_expired": {"vi": "quá hạn, không phát", "en": "expired, not played"},
    "ev_gap": {"vi": "phát trực tiếp bị gián đoạn", "en": "gap in a live session"},
    # The schedule as a calendar (controller/web/calendar.py)
    "calendar": {"vi": "Lịch phát", "en": "Schedule"},
    "calendar_target": {"vi": "Nơi phát", "en": "Where"},
    "all_my_clusters": {"vi": "Tất cả cụm loa của tôi", "en": "All my clusters"},
    "calendar_view": {"vi": "Xem theo", "en": "View"},
    "view_week": {"vi": "Tuần", "en": "Week"},
    "view_day": {"vi": "Ngày", "en": "Day"},
    "calendar_day": {"vi": "Ngày", "en": "Day"},
    "earlier": {"vi": "Trước", "en": "Earlier"},
    "later": {"vi": "Sau", "en": "Later"},
    "today": {"vi": "Hôm nay", "en": "Today"},
    # The content page (controller/web/audio_files.py)
    "content_page": {"vi": "Nội dung chương trình", "en": "Programme audio"},
    "content_help": {
        "vi": "Tải lên âm thanh của một chương trình: tệp được kiểm tra, chuẩn hóa độ lớn và "
              "lưu vào thư mục âm thanh của danh sách phát, để danh sách phát ghi tên tệp.",
        "en": "Upload a programme's audio: it is checked, brought to the fleet's loudness and "
              "kept in the playlists' audio folder, for a playlist to name.",
    },
    "content_disabled": {
        "vi": "Chưa có thư mục âm thanh của danh sách phát: không tải lên được.",
        "en": "There is no playlists' audio folder: uploads are off.",
    },
    "content_refused": {"vi": "Tệp không dùng được:", "en": "This file cannot be used:"},
    "content_added": {"vi": "Đã lưu:", "en": "Kept:"},
    "content_write_as": {"vi": "Ghi trong danh sách phát:", "en": "Write in the playlist:"},
    "content_loudness": {
        "vi": "Độ lớn {before} LUFS → {after} LUFS; dài {seconds} giây.",
        "en": "Loudness {before} LUFS → {after} LUFS; {seconds} seconds long.",
    },
    "content_file": {"vi": "Tệp âm thanh", "en": "Audio file"},
    "content_name": {"vi": "Tên tệp (không dấu)", "en": "File name"},
    "content_replace": {"vi": "Thay tệp cùng tên", "en": "Replace a file of that name"},
    "content_upload": {"vi": "Tải lên", "en": "Upload"},
    "content_files": {"vi": "Các tệp trong thư mục", "en": "Files in the folder"},
    "content_size": {"vi": "Dung lượng", "en": "Size"},
    "airs_next": {"vi": "Sẽ phát lúc:", "en": "Airs next:"},
    "nothing_scheduled": {"vi": "Không có lượt phát nào.", "en": "Nothing scheduled."},
    "weekday_0": {"vi": "Thứ Hai", "en": "Monday"},
    "weekday_1": {"vi": "Thứ Ba", "en": "Tuesday"},
    "weekday_2": {"vi": "Thứ Tư", "en": "Wednesday"},
    "weekday_3": {"vi": "Thứ Năm", "en": "Thursday"},
    "weekday_4": {"vi": "Thứ Sáu", "en": "Friday"},
    "weekday_5": {"vi": "Thứ Bảy", "en": "Saturday"},
    "weekday_6": {"vi": "Chủ nhật", "en": "Sunday"},
}


def lang_in(asked: str | None, remembered: str | None) -> Lang:
    """The page's language: asked for (?lang=), else remembered (cookie), else Vietnamese."""
    wanted = asked or remembered or "vi"
    return "en" if wanted == "en" else "vi"


def t(lang: Lang, key: str, **values: object) -> str:
    entry = TEXT.get(key)
    if entry is None:
        return key
    text = entry.get(lang) or entry["vi"]
    return text.format(**values) if values else text
