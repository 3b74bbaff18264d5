;;; alignsts: corrections to Festival's stock singing mode (singing-mode.scm, public domain,
;;; Dominic Mazzoni 2001 / Milan Zamazal 2006), loaded after it with
;;;   text2wave -mode singing -eval THIS_FILE score.xml
;;; The stock functions take a syllable's phones with `item.leafs', which walks on past the
;;; syllable to the end of its word: every syllable of a multi-syllable word is then timed as if
;;; it held all the word's remaining phones, and the word's notes come out too short or too long.
;;; The two functions below are the stock ones with `item.daughters' (the syllable's own phones).
;;; Nothing else changes; the system's files are never edited.

(require 'singing-mode)

(define (singing_syl_segments syl)
  "The segments (phones) of syllable SYL, and only those."
  (item.daughters (item.relation syl 'SylStructure)))

(define (singing_adjcons_syllable syl)
  (let ((totlen (apply + (mapcar (lambda (s) (get_avg_duration (item.feat s "name")))
                                 (singing_syl_segments syl))))
        (syldur (apply + (syl->durations syl)))
        (phone1 (item.daughter1 (item.relation syl 'SylStructure)))
        (prevsyl (item.prev (item.relation syl 'Syllable))))
    (let ((offset (get_duration_offset (item.feat phone1 "name"))))
      (if (< syldur totlen)
          (set! offset (* offset (/ syldur totlen))))
      (if prevsyl
          (begin
            (item.set_feat prevsyl 'subtractoffset offset)
            (item.set_feat syl 'addoffset offset))))))

(define (singing_do_syllable syl)
  (let ((conslen 0.0)
        (vowlen 0.0)
        (segments (singing_syl_segments syl)))
    ;; a syllable without a vowel: its middle phone carries the note
    (let ((segments* segments)
          (vowel-found nil))
      (while (and segments* (not vowel-found))
        (if (equal? "+" (item.feat (car segments*) "ph_vc"))
            (set! vowel-found t)
            (set! segments* (cdr segments*))))
      (if (not vowel-found)
          (item.set_feat (nth (nint (/ (- (length segments) 1) 2)) segments) "singing-vc" "+")))
    (mapcar (lambda (s)
              (let ((slen (get_avg_duration (item.feat s "name"))))
                (if (or (equal? "+" (item.feat s "ph_vc"))
                        (equal? "+" (item.feat s "singing-vc")))
                    (set! vowlen (+ vowlen slen))
                    (set! conslen (+ conslen slen)))))
            segments)
    (let ((totlen (+ conslen vowlen))
          (syldur (apply + (syl->durations syl)))
          (addoffset (item.feat syl 'addoffset))
          (subtractoffset (item.feat syl 'subtractoffset))
          offset)
      (set! offset (- subtractoffset addoffset))
      (if (< offset (/ syldur 2.0))
          (set! syldur (- syldur offset)))
      (if (> totlen syldur)
          ;; the phones' usual lengths exceed the note: shrink them all alike
          (let ((stretch (/ syldur totlen)))
            (mapcar (lambda (s)
                      (let ((slen (* stretch (get_avg_duration (item.feat s "name")))))
                        (set! singing_global_time (+ slen singing_global_time))
                        (item.set_feat s 'end singing_global_time)))
                    segments))
          ;; otherwise the vowels take up the rest of the note
          (let ((voweltime (- syldur conslen)))
            (let ((vowelstretch (/ voweltime vowlen))
                  (phones (mapcar car (car (cdar (PhoneSet.description '(phones)))))))
              (mapcar (lambda (s)
                        (let ((slen (get_avg_duration (item.feat s "name"))))
                          (if (or (equal? "+" (item.feat s "ph_vc"))
                                  (equal? "+" (item.feat s "singing-vc")))
                              (begin
                                (set! slen (* vowelstretch slen))
                                (if (> slen singing-max-short-vowel-length)
                                    (let ((sname (string-append (item.feat s "name") ":")))
                                      (if (member_string sname phones)
                                          (item.set_feat s "name" sname))))))
                          (set! singing_global_time (+ slen singing_global_time))
                          (item.set_feat s 'end singing_global_time)))
                      segments))))))
  (let ((restlen (car (syl->rest syl))))
    (if (> restlen 0)
        (let ((lastseg (item.daughtern (item.relation syl 'SylStructure)))
              (silence (car (car (cdr (assoc 'silences (PhoneSet.description))))))
              (singing_global_time* singing_global_time))
          (let ((seg (item.relation lastseg 'Segment))
                (extra-pause-length 0.00001))
            (set! singing_global_time (+ restlen singing_global_time))
            (item.insert seg (list silence (list (list "end" singing_global_time))) 'after)
            (if (and seg
                     (equal? (item.feat seg "ph_vc") "+")
                     (< extra-pause-length restlen))
                (item.insert seg (list silence (list (list "end" (+ singing_global_time* extra-pause-length))))
                             'after)))))))
